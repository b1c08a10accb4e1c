"""build_model: ModelConfig -> DensityModel, with clear errors for impossible configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.config import ModelConfig
from flows.density import DensityModel


def _require_data_fields(cfg: ModelConfig) -> None:
    missing = [f for f in ("image_shape", "n_bins") if getattr(cfg, f) is None]
    if missing:
        raise ValueError(
            f"ModelConfig.{' and '.join(missing)} not set: these come from the dataset "
            "manifest (the pipeline fills them with cfg.model_copy(update={'image_shape': "
            "manifest.image_shape, 'n_bins': manifest.n_bins}))."
        )
    if min(cfg.image_shape) < 1:
        raise ValueError(f"image_shape must be positive (C, H, W), got {cfg.image_shape}.")


def _require_divisible(cfg: ModelConfig, halvings: int, why: str) -> None:
    c, h, w = cfg.image_shape
    factor = 2**halvings
    if h % factor or w % factor:
        raise ValueError(
            f"{cfg.name} with levels={cfg.levels} {why}, so H and W must be divisible by "
            f"2**{halvings} = {factor}; got image {c}x{h}x{w}. Lower `levels` or resize."
        )


def _validate(cfg: ModelConfig) -> None:
    _require_data_fields(cfg)
    c, h, w = cfg.image_shape
    if cfg.name in ("vae", "fvae") and cfg.preprocess == "logit":
        raise ValueError(f"{cfg.name} has no logit preprocessing (its decoder models y "
                         "directly); use preprocess: auto or none.")
    if cfg.name in ("vae", "fvae") and cfg.dequantization == "variational":
        raise ValueError(f"dequantization: variational is for the exact flows (glow, realnvp, "
                         f"nice); {cfg.name} uses uniform dequantisation.")
    if cfg.name in ("glow", "fvae"):
        _require_divisible(cfg, cfg.levels, f"squeezes {cfg.levels} times")
    elif cfg.name == "realnvp":
        _require_divisible(cfg, cfg.levels - 1, f"squeezes {cfg.levels - 1} times")
        if (h >> (cfg.levels - 1)) * (w >> (cfg.levels - 1)) < 2:
            raise ValueError(f"realnvp with levels={cfg.levels} leaves a 1x1 image for the "
                             f"last scale's checkerboard couplings; lower `levels`.")
    elif cfg.name == "vae":
        _require_divisible(cfg, cfg.levels, f"down-samples {cfg.levels} times")
    elif cfg.name == "nice" and c * h * w < 2:
        raise ValueError(f"nice needs at least 2 dimensions to couple, got {cfg.image_shape}.")


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> DensityModel:
    """Build the model `cfg.name` (glow | realnvp | nice | vae | fvae), freshly initialised.

    Raises ValueError when image_shape / n_bins are unset or the image cannot go through the
    requested number of levels.
    """
    # re-validate: model_copy(update=...) (how image_shape / n_bins arrive) skips validation
    data = dict(cfg) if isinstance(cfg, ModelConfig) else cfg
    cfg = ModelConfig.model_validate(data)
    _validate(cfg)
    from flows.models import MODELS

    return MODELS[cfg.name](cfg)
