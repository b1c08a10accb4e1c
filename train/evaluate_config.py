"""Typed settings of the `evaluate` section of pipeline.yaml (the evaluate stage runs
`train.evaluation`, the training loop's own evaluation, with them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EvaluateConfig(BaseModel):
    """Final test bits/dim of the trained model, on the whole test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(256, gt=0, le=65536, description="Test images per forward pass.")
    seed: int = Field(
        0, ge=0, description="Seed of the noise (dequantisation and latents, drawn on the CPU "
        "from streams derived per split and k) and of the sample grids, so the reported test "
        "bpd is reproducible, on any device."
    )
    k: int = Field(
        64, gt=0, le=10000, description="Draws per image of the importance-weighted bound, "
        "every family (dequantisation noise or q(u|x), and VAE / f-VAE latents), combined by "
        "a log-mean-exp: tighter than k = 1. The stage reports `test_bpd` (k = 1, the "
        "figure the registry and README report) and `test_bpd_k{k}` beside it (1: only "
        "k = 1), on the test split, for the chosen model only. At k = 1 the VAE and f-VAE "
        "use their ELBO with the closed-form KL (VAE) or entropy of q(u) (f-VAE); k > 1 "
        "samples those terms instead."
    )
    grid_samples: int = Field(
        64, ge=0, le=1024, description="Images in each sample grid (0: no grids)."
    )
    temperatures: tuple[float, ...] = Field(
        (1.0, 0.7), description="Sampling temperatures, one grid each."
    )
    device: str = Field(
        "cpu", description="Torch device for evaluation: cpu, cuda, cuda:1, or auto."
    )
    directions: bool = Field(
        True, description="Compute attribute directions (Glow Fig. 6: the mean latent of the "
        "train images with an attribute minus that of those without) from the train split's "
        "labels (CelebA's 40 attributes, or the classes one-vs-rest) and register them with "
        "the model, for `nfpipe deploy attributes` and `deploy manipulate`."
    )
    direction_images: int = Field(
        20000, ge=0, description="Train images (the first, in shard order) the directions "
        "are averaged over; 0: all."
    )

    @field_validator("temperatures")
    @classmethod
    def _positive_temperatures(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(t <= 0 for t in value):
            raise ValueError(f"temperatures must be > 0, got {list(value)}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("cpu", "auto") and not value.startswith(("cuda", "mps")):
            raise ValueError(f"device must be cpu, auto, cuda[:N] or mps, got {value!r}")
        return value
