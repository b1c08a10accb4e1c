"""Typed configuration of the train stage (`train:` in pipeline.yaml).

Validated once at the CLI edge; the Ray workers receive `model_dump(mode="json")` and
re-validate it with `TrainConfig.model_validate`, so code below sees only typed objects.
`leaf_paths` lists every settable dotted path (what a sweep may search).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_prep.storage import Location
from flows.config import ModelConfig
from train.typed import model_type

#: Pairs of alternative settings in `optim`: a count in optimiser steps (or a per-step decay)
#: and the same quantity in images, which survives a change of batch size or worker count.
OPTIM_ALTERNATIVES = (("warmup_steps", "warmup_images"), ("ema_decay", "ema_images"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(_Section):
    """Optimiser and its stabilisers: linear warmup, gradient-norm clipping, weight EMA."""

    name: Literal["adam", "adamax"] = Field(
        "adam", description="Optimiser: adam (torch.optim.Adam) or adamax (as in Glow)."
    )
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay (coupled, as in Adam).")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="Adam/Adamax (beta1, beta2), each in [0, 1)."
    )
    warmup_steps: int | None = Field(
        200,
        ge=0,
        description="Linear LR warm-up in optimiser steps (0: none). Tied to the batch: prefer "
        "warmup_images. Give warmup_steps or warmup_images, not both (a profile or --set that "
        "gives one replaces the other).",
    )
    warmup_images: int | None = Field(
        None,
        ge=0,
        description="Linear LR warm-up in images (summed over workers): the step that brings the "
        "images seen to N runs at lr·min(1, N / warmup_images), the same schedule at any global "
        "batch or worker count (Glow: 10 epochs of 50,000 = 500000). Replaces warmup_steps.",
    )
    grad_clip: float | None = Field(
        50.0, gt=0, description="Clip the global gradient norm to this value (null: no clip)."
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights with this decay per "
        "optimiser step and evaluate/export it (Polyak averaging; null, and no ema_images: "
        "evaluate the raw weights). Tied to the batch: prefer ema_images. Give ema_decay or "
        "ema_images, not both.",
    )
    ema_images: int | None = Field(
        None,
        gt=0,
        description="The weight EMA's horizon in images: decay per step d = 1 - batch_size / "
        "ema_images, so the average spans the same images at any global batch or worker count "
        "(Glow: polyak_epochs=1, one epoch of train images). Must exceed batch_size. Replaces "
        "ema_decay.",
    )
    ema_debias: bool = Field(
        True,
        description="Bias-correct the moving average (as Adam's moments, and Glow's "
        "zero-debiased EMA): after t updates it weighs the iterates by (1-d)d^(t-i)/(1-d^t), "
        "so early evaluations are not dominated by the initial weights.",
    )

    @model_validator(mode="before")
    @classmethod
    def _images_replace_steps(cls, data: Any) -> Any:
        """warmup_images given alone replaces the default warmup_steps."""
        if isinstance(data, Mapping) and data.get("warmup_images") is not None:
            return {"warmup_steps": None, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        for steps, images in OPTIM_ALTERNATIVES:
            if getattr(self, steps) is not None and getattr(self, images) is not None:
                raise ValueError(
                    f"give optim.{steps} or optim.{images}, not both (got {getattr(self, steps)} "
                    f"and {getattr(self, images)}); set the other to null"
                )
        return self

    def warmup_images_at(self, global_batch: int) -> int:
        """Images of the LR warm-up at this global batch (0: none); warmup_steps count
        `global_batch` images each."""
        if self.warmup_images is not None:
            return self.warmup_images
        return (self.warmup_steps or 0) * global_batch

    def warmup_steps_at(self, global_batch: int) -> int:
        """Optimiser steps until the LR reaches `lr`: ceil(warm-up images / global batch)."""
        return -(-self.warmup_images_at(global_batch) // global_batch)

    def ema_decay_at(self, global_batch: int) -> float | None:
        """The EMA's decay per optimiser step: ema_decay, or 1 - global_batch / ema_images
        (after N images the initial average weighs (1 - B/H)^(N/B) ≈ exp(-N/H) at any batch
        B); None: no EMA."""
        if self.ema_images is not None:
            return 1.0 - global_batch / self.ema_images
        return self.ema_decay


class ScalingSpec(_Section):
    """How many Ray Train workers and what each one reserves."""

    num_workers: int = Field(2, ge=1, description="Data-parallel Ray Train workers (ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL backend (else gloo).")
    cpus_per_worker: int = Field(
        1, ge=1, description="CPUs each worker reserves; also its torch intra-op threads."
    )
    gpus_per_worker: float = Field(
        1.0, gt=0, description="GPUs each worker reserves when use_gpu (fractions allowed)."
    )


class TrainConfig(_Section):
    """Data-parallel training of one model on one prepared dataset."""

    model: ModelConfig = Field(
        ModelConfig(name="glow"),
        description="The model (image_shape and n_bins are filled in from the manifest).",
    )
    epochs: int = Field(2, gt=0, description="Training epochs (passes over the train split).")
    batch_size: int = Field(
        64,
        gt=0,
        description="GLOBAL batch per optimiser step, summed over workers; each worker takes "
        "batch_size / num_workers (must divide evenly).",
    )
    eval_batch_size: int | None = Field(
        None, gt=0, description="Global batch for evaluation (null: same as batch_size)."
    )
    optim: OptimConfig = Field(OptimConfig(), description="Optimiser settings.")
    eval_every: int = Field(
        1,
        gt=0,
        description="Evaluate val bpd (whole val split) and checkpoint every N epochs; the "
        "last epoch is always evaluated and checkpointed.",
    )
    eval_at_start: bool = Field(
        True, description="Also evaluate the initialised model (logged as epoch 0)."
    )
    eval_k: int = Field(
        1,
        ge=1,
        description="Draws per image of the importance-weighted bound at the last epoch, "
        "on the val split, logged as val_bpd_k{eval_k} beside val_bpd (1: skip it; the "
        "evaluate stage reports evaluate.k on the test split for the chosen model).",
    )
    init_images: int = Field(
        256,
        ge=1,
        description="Images of ActNorm's data-dependent initialisation (Glow: 256), gathered "
        "over the ranks' first batches; rank 0 initialises, then broadcasts.",
    )
    log_every: int = Field(
        10, gt=0, description="Log per-step metrics to MLflow every N optimiser steps."
    )
    seed: int = Field(0, ge=0, description="Seed of weights, data order and noise.")
    scaling: ScalingSpec = Field(ScalingSpec(), description="Ray Train workers.")
    storage_path: Location | None = Field(
        None,
        description="Ray Train storage (checkpoints, run snapshots): a local path or a URL "
        "(s3://bucket/prefix, gs://bucket/prefix); null: {workdir}/ray_results. On a "
        "multi-node cluster, object storage or a shared file system.",
    )
    checkpoints_keep: int = Field(
        2, ge=1, description="Checkpoints kept: the best by test bpd (plus always the latest)."
    )
    max_failures: int = Field(
        2, ge=-1, description="Worker-group restarts from the last checkpoint (-1: unlimited)."
    )
    max_nonfinite_steps: int = Field(
        20,
        ge=1,
        description="Stop with an error after this many non-finite losses/gradients in a row "
        "(isolated ones are skipped and counted).",
    )
    collective_timeout_s: int = Field(
        600, gt=0, description="Timeout of torch.distributed collectives (a hang fails fast)."
    )
    amp: bool = Field(
        False,
        description="bf16 autocast for the coupling networks only (sets the model's net_dtype; "
        "log-dets and priors stay float32). GPU; on CPU it works but rarely pays.",
    )
    compile: bool = Field(False, description="torch.compile the training objective.")
    cuda_graphs: bool = Field(
        False,
        description="Capture the whole training step (forward, backward, optimiser, EMA) in a "
        "CUDA graph and replay it (GPU only; the step must make no host sync).",
    )
    channels_last: bool = Field(False, description="channels_last memory format (GPU convs).")
    tf32: bool = Field(True, description="Allow TF32 matmuls/convs on Ampere+ GPUs.")
    loader_workers: int = Field(
        0,
        ge=0,
        description="Loader processes per Ray worker that decode batches while the model "
        "trains (0: decode in the training process between steps).",
    )
    loader_prefetch: int = Field(
        2,
        ge=1,
        description="Batches each loader process keeps ready (with loader_workers > 0); on a "
        "GPU they are also pinned for non-blocking copies.",
    )
    sample_n: int = Field(64, gt=0, description="Images in each logged sample grid.")
    sample_temperatures: tuple[float, ...] = Field(
        (0.7, 1.0), description="Temperatures of the sample grids logged at each evaluation."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                per_worker_batch(getattr(self, name), self.scaling.num_workers, name)
        ema_images = self.optim.ema_images
        if ema_images is not None and ema_images <= self.batch_size:
            raise ValueError(
                f"optim.ema_images={ema_images} must exceed batch_size={self.batch_size}: the "
                f"EMA's decay per step is 1 - batch_size/ema_images "
                f"= {1 - self.batch_size / ema_images:g}"
            )
        if any(t <= 0 for t in self.sample_temperatures):
            raise ValueError(f"sample_temperatures must be > 0, got {self.sample_temperatures}")
        return self


def per_worker_batch(global_batch: int, workers: int, name: str = "batch_size",
                     workers_name: str = "scaling.num_workers") -> int:
    """Each worker's share of the global batch; ValueError naming both numbers (and the
    nearest global batches that split evenly) when `workers` does not divide it."""
    if global_batch % workers == 0:
        return global_batch // workers
    lower, upper = global_batch // workers * workers, -(-global_batch // workers) * workers
    choices = " or ".join(str(b) for b in (lower, upper) if b > 0)
    raise ValueError(
        f"{name}={global_batch} is the global batch, split over {workers_name}={workers} "
        f"workers: {global_batch} / {workers} = {global_batch / workers:.4g} images per worker "
        f"is not whole; set {name} to a multiple of {workers} (e.g. {choices}) or change "
        f"{workers_name}"
    )


def leaf_paths(model: type[BaseModel] = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted path of the train config -> its field annotation."""
    paths: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        sub = model_type(field.annotation)
        if sub is not None:
            paths.update(leaf_paths(sub, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = field.annotation
    return paths
