"""The search space: checks before any trial, Ray Tune domains, and a trial's train config.

A trial's configuration is the `train:` section with the trial's overrides applied at their
dotted paths, then the settings every trial shares (`trial_train_config`): `tune.max_t`
epochs, an evaluation (and a checkpoint) every epoch, and the tune section's workers.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from train.config import OPTIM_ALTERNATIVES, TrainConfig, leaf_paths, per_worker_batch
from train.typed import settle_alternatives
from tune.config import WARMUPS, ParamDistribution, TuneConfig, check_path

Overrides = dict[str, Any]  # dotted path inside train: -> value
# alternatives inside the train section: a trial that sets one clears the other
OPTIM_PAIRS = tuple((f"optim.{a}", f"optim.{b}") for a, b in OPTIM_ALTERNATIVES)
MAX_BUILDS = 64  # model corners built at most when checking a space


class SearchSpaceError(ValueError):
    """An invalid search space, found before any trial starts; the message names the path.

    A configuration error: the CLI prints it without a traceback and exits with code 2."""


def apply_overrides(base: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """`base` with each dotted path set to its value, validated as a whole. Setting one of a
    pair of alternatives (optim.warmup_steps or optim.warmup_images, …) clears the other."""
    before = base.model_dump(mode="json")
    raw = copy.deepcopy(before)
    for path, value in overrides.items():
        node = raw
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return TrainConfig.model_validate(settle_alternatives(before, raw, OPTIM_PAIRS))


def trial_train_config(base: TrainConfig, overrides: Mapping[str, Any], cfg: TuneConfig):
    """The train config one trial runs: overrides, then the settings all trials share."""
    shared = {
        "epochs": cfg.max_t,
        "eval_every": 1,  # the scheduler compares trials on every epoch's test bpd
        "eval_at_start": False,  # epoch 0 is never reported to Tune
        "scaling.num_workers": cfg.workers_per_trial,
    }
    for name in WARMUPS:
        if getattr(cfg, name) is not None:
            shared[f"optim.{name}"] = getattr(cfg, name)
    return apply_overrides(base, {**overrides, **shared})


def trial_gpus(cfg: TuneConfig, train: TrainConfig) -> float:
    """GPUs one trial's own process reserves: tune.gpus_per_trial (a fraction lets trials
    share a GPU), else train.scaling.gpus_per_worker; none on CPU, and none for a trial that
    drives a TorchTrainer (its workers reserve their own)."""
    if not train.scaling.use_gpu:
        if cfg.gpus_per_trial is not None:
            raise SearchSpaceError(
                f"tune.gpus_per_trial={cfg.gpus_per_trial:g} reserves GPUs but "
                "train.scaling.use_gpu is false, so trials would train on the CPU; set "
                "train.scaling.use_gpu=true or remove tune.gpus_per_trial"
            )
        return 0.0
    if cfg.workers_per_trial > 1:
        return 0.0
    return cfg.gpus_per_trial if cfg.gpus_per_trial is not None else \
        train.scaling.gpus_per_worker


def to_tune_space(space: Mapping[str, ParamDistribution]) -> dict[str, Any]:
    """Ray Tune domains, one per dotted path (randint made inclusive of hi)."""
    from ray import tune

    make = {
        "choice": lambda args: tune.choice(list(args)),
        "loguniform": lambda args: tune.loguniform(*args),
        "uniform": lambda args: tune.uniform(*args),
        "randint": lambda args: tune.randint(args[0], args[1] + 1),
    }
    return {path: make[dist.kind](dist.args) for path, dist in space.items()}


def overrides_of(config: Mapping[str, Any], space: Mapping[str, Any]) -> Overrides:
    """The searched values of a trial's config (what Tune sampled), JSON-friendly."""
    return {path: _plain(config[path]) for path in space if path in config}


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samples) -> Python numbers."""
    return value.item() if hasattr(value, "item") else value


def validate_space(
    cfg: TuneConfig,
    base: TrainConfig,
    image_shape: tuple[int, int, int] | None = None,
    n_bins: int | None = None,
) -> None:
    """Raise SearchSpaceError, naming the parameter, for a space no trial could run.

    Checks every path, every corner value against the train config, and (given the
    dataset's image shape) builds the model at the corners of the model parameters.
    """
    _check_shared(cfg, base)
    for path, dist in cfg.space.items():
        try:
            check_path(path)
        except ValueError as err:
            raise SearchSpaceError(f"tune.space: {err}") from None
        _check_kind(path, dist)
        for value in dist.corners():
            _check_value(cfg, base, path, dist, value)
    if image_shape is not None:
        check_models(cfg, base, tuple(image_shape), n_bins)


def _check_shared(cfg: TuneConfig, base: TrainConfig) -> None:
    trial_gpus(cfg, base)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(base, name) is not None and name not in cfg.space:
            try:
                per_worker_batch(getattr(base, name), cfg.workers_per_trial,
                                 f"train.{name}", "tune.workers_per_trial")
            except ValueError as err:
                raise SearchSpaceError(f"tune: a trial cannot split its batch: {err}") from None
    try:
        trial_train_config(base, {}, cfg)
    except ValidationError as err:
        raise SearchSpaceError(
            f"tune: the train config cannot run as a trial (tune.max_t={cfg.max_t}, "
            f"tune.workers_per_trial={cfg.workers_per_trial}): {_problems(err)}"
        ) from None


def _check_kind(path: str, dist: ParamDistribution) -> None:
    """Continuous distributions only for float fields (an int field would get 2.37)."""
    annotation = leaf_paths()[path]
    if dist.kind in ("uniform", "loguniform") and annotation in (int, int | None):
        raise SearchSpaceError(
            f"tune.space.{path}: {dist.kind} draws floats but {path} is an integer; "
            "use randint or choice"
        )


def _problems(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '(train)'}: {e['msg']}" for e in err.errors()
    )


def _check_value(cfg, base, path: str, dist: ParamDistribution, value: Any) -> None:
    try:
        trial_train_config(base, {path: value}, cfg)
    except ValidationError as err:
        raise SearchSpaceError(
            f"tune.space.{path}: value {value!r} of {dist.describe()} is invalid for train: "
            f"{_problems(err)}"
        ) from None


def check_warmup(cfg: TuneConfig, base: TrainConfig, train_images: int) -> None:
    """Raise SearchSpaceError when a trial would still be warming its learning rate up when
    the scheduler first compares it (a learning-rate search would then compare ramps).

    Rejected rather than scaled: the user's warmup is kept as written, and the message says
    the numbers and the settings that fix it. Checked at the corners of the space's batch
    size and warmup."""
    searched = ("batch_size", *(f"optim.{name}" for name in WARMUPS))
    for corner in _corners(cfg, searched):
        train = trial_train_config(base, corner, cfg)
        world = cfg.workers_per_trial
        steps_per_epoch = (train_images // world) // (train.batch_size // world)
        rung_steps = cfg.first_rung_epochs * steps_per_epoch
        warmup = train.optim.warmup_steps_at(train.batch_size)
        if warmup == 0 or warmup < rung_steps:
            continue
        where = ("ASHA first compares trials after tune.grace_period="
                 f"{cfg.grace_period}" if cfg.scheduler == "asha"
                 else f"trials end after tune.max_t={cfg.max_t}")
        epochs_needed = warmup // max(steps_per_epoch, 1) + 1
        raise SearchSpaceError(
            f"tune: trials warm the learning rate up for {warmup} optimiser steps "
            f"({_warmup_source(cfg, corner, train)}), but {where} epoch(s) = {rung_steps} steps "
            f"({train_images} train images / batch {train.batch_size}): every trial would be "
            f"judged before it reached its own lr. Set tune.warmup_steps below {rung_steps} "
            f"(e.g. {rung_steps // 2}) or tune.warmup_images below "
            f"{rung_steps * train.batch_size}, or raise tune.grace_period to {epochs_needed}"
        )


def _warmup_source(cfg: TuneConfig, corner: Overrides, train: TrainConfig) -> str:
    """The setting a trial's warm-up comes from, with its value."""
    for name in WARMUPS:
        if getattr(cfg, name) is not None:
            return f"tune.{name}={getattr(cfg, name)}"
        if f"optim.{name}" in corner:
            return f"tune.space.optim.{name}={corner[f'optim.{name}']}"
    name = "warmup_images" if train.optim.warmup_images is not None else "warmup_steps"
    return f"train.optim.{name}={getattr(train.optim, name)}"


def _corners(cfg: TuneConfig, paths: tuple[str, ...]) -> list[Overrides]:
    """Every combination of the corner values of those `paths` the space searches."""
    params = {path: cfg.space[path].corners() for path in paths if path in cfg.space}
    return [dict(zip(params, combo, strict=True))
            for combo in itertools.product(*params.values())]


def model_corners(cfg: TuneConfig) -> list[Overrides]:
    """Combinations of the corner values of the `model.*` parameters (at most MAX_BUILDS).

    `model.hidden` only changes widths, so it is held at its smallest corner. Past
    MAX_BUILDS combinations, each parameter's corners are tried alone.
    """
    params = {
        path: dist.corners() for path, dist in cfg.space.items() if path.startswith("model.")
    }
    if "model.hidden" in params:
        params["model.hidden"] = (min(params["model.hidden"]),)
    if not params:
        return [{}]
    if math.prod(len(values) for values in params.values()) <= MAX_BUILDS:
        combos = itertools.product(*params.values())
        return [dict(zip(params, combo, strict=True)) for combo in combos]
    return [{path: value} for path, values in params.items() for value in values]


def check_models(
    cfg: TuneConfig, base: TrainConfig, image_shape: tuple[int, int, int], n_bins: int | None
) -> None:
    """Build the model at every corner for the dataset's images; raise naming the values."""
    from flows import build_model

    for corner in model_corners(cfg):
        train = trial_train_config(base, corner, cfg)
        model_cfg = train.model.model_copy(
            update={"image_shape": image_shape, "n_bins": n_bins or 256}
        )
        try:
            build_model(model_cfg)
        except ValueError as err:
            shown = ", ".join(f"{p}={v!r}" for p, v in corner.items()) or "the train model"
            raise SearchSpaceError(
                f"tune.space: {shown} cannot be built for images "
                f"{'x'.join(map(str, image_shape))}: {err}"
            ) from None


def count_parameters(train: TrainConfig, image_shape: tuple[int, int, int], n_bins: int) -> int:
    """Trainable parameters of the model a trial config builds."""
    from flows import build_model

    model_cfg = train.model.model_copy(update={"image_shape": image_shape, "n_bins": n_bins})
    return sum(p.numel() for p in build_model(model_cfg).parameters() if p.requires_grad)
