"""The one scoring and sampling path: bits/dim of integer levels, and samples as levels.

Evaluation (the train loop's and the evaluate stage's), the registered MLflow model and the
deploy commands all score through `score_levels` and sample through `sample_levels`, so a
number seen anywhere is computed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flows import bpd
from flows.api import DensityModel


def score_levels(model: DensityModel, x: Any, *, noise_draws: int = 1,
                 importance_samples: int = 1,
                 generator: torch.Generator | int | None = 0) -> np.ndarray:
    """Bits/dim of each image [B] (float64 numpy) under seeded dequantization noise.

    x: integer levels [B, C, H, W] (tensor or array). `noise_draws` dequantisations per image
    are averaged (an estimate of the same bound with less variance). `importance_samples`
    is K of the IWAE bound for VAE / f-VAE (tighter for larger K; exact flows ignore it).
    `generator` is an int seed or a `torch.Generator` (to continue one stream over batches).
    """
    if noise_draws < 1 or importance_samples < 1:
        raise ValueError(f"Expected noise_draws, importance_samples >= 1, got {noise_draws}, "
                         f"{importance_samples}.")
    device = next(model.parameters()).device
    generator = _generator(generator, device)
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    bpd.check_levels(x, model.n_bins)  # here: on a device, the objective skips the values
    x = x.to(device)
    k = 1 if model.exact else importance_samples
    with torch.no_grad():
        total = sum(model.bits_per_dim(x, k=k, generator=generator).double()
                    for _ in range(noise_draws))
    return (total / noise_draws).cpu().numpy()


def sample_levels(model: DensityModel, n: int, temperature: float = 1.0,
                  generator: torch.Generator | int | None = 0) -> np.ndarray:
    """`n` samples at `temperature` as uint8 levels [n, C, H, W] (seeded)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        y = model.sample(n, temperature=temperature, generator=_generator(generator, device))
    return model.to_levels(y).to(torch.uint8).cpu().numpy()


def _generator(seed: torch.Generator | int | None, device: torch.device):
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))
