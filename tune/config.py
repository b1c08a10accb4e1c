"""Typed configuration of the tune stage (`tune:` in pipeline.yaml).

The search space maps a dotted path inside the `train:` section to a distribution:

```yaml
tune:
  space:
    model.levels: {choice: [1, 2]}
    model.coupling: {choice: [affine, additive]}
    optim.lr: {loguniform: [3.0e-4, 3.0e-3]}
```

A bare list is a `choice`, nested keys (`model: {levels: …}`) are flattened to dotted paths
(so `--set tune.space.model.steps=[1,2]` works) and `null` removes a parameter. What can be
checked from the schema alone (known paths, non-empty choices, ordered ranges, the ASHA
settings) is checked here; values against the train config and models against the image
size are checked by `tune.space.validate_space` before any trial starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from train.config import leaf_paths
from train.typed import suggest

DISTRIBUTIONS = ("choice", "loguniform", "uniform", "randint")
WARMUPS = ("warmup_steps", "warmup_images")  # the trials' own warm-up: one of them at most
# Paths a sweep may not vary, and why (the tune section or the dataset owns them).
RESERVED_PATHS = {
    "epochs": "a trial trains tune.max_t epochs; set tune.max_t",
    "eval_every": "trials evaluate every epoch so the scheduler can compare them",
    "model.image_shape": "it comes from the dataset manifest",
    "model.n_bins": "it comes from the dataset manifest",
    "scaling.num_workers": "set tune.workers_per_trial",
    "storage_path": "trials write under the sweep's folder",
}


class ParamDistribution(BaseModel):
    """One searched parameter: exactly one of `choice`, `loguniform`, `uniform`, `randint`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choice: tuple[Any, ...] | None = Field(
        None, description="Pick uniformly among these values (at least one)."
    )
    loguniform: tuple[float, float] | None = Field(
        None, description="[lo, hi], 0 < lo < hi: log-uniform float (learning rates)."
    )
    uniform: tuple[float, float] | None = Field(
        None, description="[lo, hi], lo < hi: uniform float."
    )
    randint: tuple[int, int] | None = Field(
        None, description="[lo, hi], lo <= hi: uniform integer, both ends INCLUSIVE."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_list_is_choice(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            return {"choice": data}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"expected a list (a choice) or one of {{{', '.join(DISTRIBUTIONS)}}}: …, "
                f"got {data!r}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamDistribution:
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DISTRIBUTIONS)}, got {given or 'none'}"
            )
        kind, value = given[0], getattr(self, given[0])
        if kind == "choice" and not value:
            raise ValueError("empty choice: give at least one value")
        if kind == "choice" and len(set(map(repr, value))) != len(value):
            raise ValueError(f"choice has repeated values: {list(value)}")
        if kind == "loguniform" and not 0 < value[0] < value[1]:
            raise ValueError(f"loguniform needs 0 < lo < hi, got {list(value)}")
        if kind == "uniform" and not value[0] < value[1]:
            raise ValueError(f"uniform needs lo < hi, got {list(value)}")
        if kind == "randint" and not value[0] <= value[1]:
            raise ValueError(f"randint needs lo <= hi, got {list(value)}")
        return self

    @model_serializer
    def _compact(self) -> dict[str, list[Any]]:
        """Only the distribution given: {'choice': [1, 2]} (also what the stage hash sees)."""
        return {self.kind: list(self.args)}

    @property
    def kind(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)

    @property
    def args(self) -> tuple[Any, ...]:
        return getattr(self, self.kind)

    def corners(self) -> tuple[Any, ...]:
        """The values that bound the distribution: every choice, or both ends of a range."""
        if self.kind == "choice":
            return self.args
        lo, hi = self.args
        return (lo,) if lo == hi else (lo, hi)

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


def _default_space() -> dict[str, ParamDistribution]:
    """The quickstart sweep on digits: depth, coupling and learning rate."""
    return {
        "model.levels": ParamDistribution(choice=(1, 2)),
        "model.steps": ParamDistribution(choice=(1, 2)),
        "model.coupling": ParamDistribution(choice=("affine", "additive")),
        "optim.lr": ParamDistribution(loguniform=(3e-4, 3e-3)),
    }


class TuneConfig(BaseModel):
    """A Ray Tune sweep over the train config: trials run the train stage's own loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: dict[str, ParamDistribution] = Field(
        default_factory=_default_space,
        description="Search space: dotted path inside `train:` (model.levels, model.steps, "
        "model.coupling, model.hidden, model.name, optim.lr, …) -> distribution "
        "({choice: [...]}, {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi]} "
        "inclusive; a bare list is a choice; null removes a parameter). A space given replaces "
        "this default one. Everything not in the space comes from `train:`.",
    )
    num_samples: int = Field(4, gt=0, description="Number of trials (configurations sampled).")
    metric: Literal["val_bpd", "train_bpd"] = Field(
        "val_bpd",
        description="Reported metric ASHA's stops, the best-trial choice and the leaderboard "
        "use (val_bpd: bits/dim over the whole val split, every evaluated epoch; no sweep "
        "reads the test split). The evaluate stage compares the tuned and trained models on "
        "val_bpd only.",
    )
    mode: Literal["min", "max"] = Field("min", description="Minimise or maximise `metric`.")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha",
        description="asha: asynchronous successive halving stops weak trials at the rungs "
        "grace_period·reduction_factor^k epochs; fifo: every trial trains max_t epochs.",
    )
    grace_period: int = Field(
        1, gt=0, description="ASHA: epochs every trial trains before it can be stopped."
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA: only the best 1/reduction_factor of trials pass a rung."
    )
    max_t: int = Field(
        4,
        gt=0,
        description="Epochs a trial trains at most (replaces train.epochs for trials; with "
        "asha only the survivors get this far).",
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Learning-rate warm-up of every trial, in optimiser steps (null: "
        "warmup_images, else train.optim's). It must end before the trials are first compared "
        "(grace_period epochs with asha, max_t with fifo), or the sweep is rejected.",
    )
    warmup_images: int | None = Field(
        None,
        ge=0,
        description="Learning-rate warm-up of every trial, in images (as "
        "train.optim.warmup_images; null: warmup_steps, else train.optim's). Give "
        "warmup_steps or warmup_images, not both.",
    )
    search: Literal["random", "optuna"] = Field(
        "random", description="random: independent samples; optuna: Optuna's TPE sampler."
    )
    cpus_per_trial: int = Field(
        1,
        gt=0,
        description="CPUs each trial reserves (its torch threads when it trains in-process; "
        "its driver when it runs a TorchTrainer).",
    )
    workers_per_trial: int = Field(
        1,
        gt=0,
        description="1: a trial runs the training loop in its own process (small machines). "
        ">1: each trial runs a data-parallel TorchTrainer with this many workers of "
        "train.scaling.cpus_per_worker CPUs; needs max_concurrent_trials x "
        "(cpus_per_trial + workers x cpus_per_worker) CPUs.",
    )
    gpus_per_trial: float | None = Field(
        None,
        gt=0,
        description="GPUs each in-process trial (workers_per_trial 1) reserves, as Ray Tune's "
        "fractional GPUs: 0.25 lets 4 trials share one GPU (they share its memory too); "
        "above 1 a whole number. null: train.scaling.gpus_per_worker. Needs "
        "train.scaling.use_gpu=true.",
    )
    max_concurrent_trials: int | None = Field(
        None,
        gt=0,
        description="Trials running at once (null: as many as the Ray cluster's CPUs fit).",
    )
    max_failures: int = Field(
        0, ge=0, description="Times a failed trial is retried from its last checkpoint."
    )
    seed: int = Field(0, ge=0, description="Seed of the search algorithm (which configs).")
    verbose: bool = Field(
        True, description="Show the live table of trials on the console while the sweep runs."
    )

    @field_validator("space", mode="before")
    @classmethod
    def _flatten_space(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return flatten_space(value)

    @field_validator("space")
    @classmethod
    def _known_paths(cls, space: dict[str, ParamDistribution]) -> dict[str, ParamDistribution]:
        if not space:
            raise ValueError("the search space is empty: give at least one parameter")
        for path in space:
            check_path(path)
        return space

    @model_validator(mode="after")
    def _scheduler_fits(self) -> TuneConfig:
        if self.scheduler == "asha" and self.grace_period > self.max_t:
            raise ValueError(
                f"grace_period={self.grace_period} must be <= max_t={self.max_t} epochs"
            )
        given = [f"tune.{name}" for name in WARMUPS if getattr(self, name) is not None]
        searched = [f"tune.space.optim.{name}" for name in WARMUPS
                    if f"optim.{name}" in self.space]
        if len(given) + len(searched) > 1:
            raise ValueError(f"set one of tune.warmup_steps, tune.warmup_images or a searched "
                             f"warm-up, not {' and '.join(given + searched)}")
        self._check_gpus_per_trial()
        return self

    def _check_gpus_per_trial(self) -> None:
        gpus = self.gpus_per_trial
        if gpus is None:
            return
        if gpus > 1 and not float(gpus).is_integer():
            raise ValueError(f"gpus_per_trial={gpus:g}: Ray reserves fractions of one GPU or "
                             f"whole GPUs; use a value <= 1 or a whole number ({int(gpus)} or "
                             f"{int(gpus) + 1})")
        if self.workers_per_trial > 1:
            raise ValueError(f"gpus_per_trial={gpus:g} applies to in-process trials "
                             f"(workers_per_trial=1); with workers_per_trial="
                             f"{self.workers_per_trial} each worker reserves "
                             "train.scaling.gpus_per_worker: set that instead and "
                             "tune.gpus_per_trial to null")

    @property
    def first_rung_epochs(self) -> int:
        """Epochs every trial trains before the scheduler first compares it."""
        return self.grace_period if self.scheduler == "asha" else self.max_t


def flatten_space(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'levels': [1, 2]}} -> {'model.levels': [1, 2]}; a None value drops the key.

    A mapping is a distribution (and not a nested section) when it has a distribution key.
    Later keys win, so `--set tune.space.model.levels=…` overrides a flat YAML key.
    """
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and not set(value) & set(DISTRIBUTIONS) and value:
            for sub_path, sub_value in flatten_space(value, path + ".").items():
                flat.pop(sub_path, None)
                flat[sub_path] = sub_value
        else:
            flat.pop(path, None)
            flat[path] = value
    return {path: value for path, value in flat.items() if value is not None}


def check_path(path: str) -> None:
    """Raise ValueError naming `path` when it is not a searchable train setting."""
    leaves = leaf_paths()
    if path in RESERVED_PATHS:
        raise ValueError(f"{path!r} cannot be searched: {RESERVED_PATHS[path]}")
    if path in leaves:
        return
    sections = {leaf.rsplit(".", 1)[0] for leaf in leaves if "." in leaf}
    if path in sections:
        fields = sorted(leaf for leaf in leaves if leaf.startswith(path + "."))
        raise ValueError(f"{path!r} is a section, not a value; search one of {fields[:8]}")
    raise ValueError(f"unknown parameter {path!r} in train:{suggest(path, leaves)}")
