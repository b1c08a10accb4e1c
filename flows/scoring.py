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
from flows.density import DensityModel


def score_levels(model: DensityModel, x: Any, *, k: int = 1,
                 generator: torch.Generator | int | None = 0) -> np.ndarray:
    """Bits/dim of each image [B] (float64 numpy): the importance-weighted bound with `k`
    draws per image, seeded.

    x: integer levels [B, C, H, W] (tensor or array). The k draws are of the dequantisation
    noise (uniform, or q(u|x) for `dequantization: variational`) and, for VAE / f-VAE, of the
    latents; they are combined by a log-mean-exp (`DensityModel.bits_per_dim`), a bound that
    tightens as k grows (k = 1: the usual single-draw bound, the ELBO for VAE / f-VAE).
    `generator` is an int seed or a `torch.Generator` (to continue one stream over batches).
    """
    if k < 1:
        raise ValueError(f"Expected k >= 1 draws per image, got {k}.")
    device = next(model.parameters()).device
    generator = _generator(generator, device)
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    bpd.check_levels(x, model.n_bins)  # here: on a device, the objective skips the values
    x = x.to(device)
    with torch.no_grad():
        scores = model.bits_per_dim(x, k=k, generator=generator)
    return scores.double().cpu().numpy()


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
