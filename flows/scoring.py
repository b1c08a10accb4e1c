"""The one scoring and sampling path: bits/dim of integer levels, and samples as levels.

Evaluation (the train loop's and the evaluate stage's), the registered MLflow model and the
deploy commands all score through `score_levels` and sample through `sample_levels`, so a
number seen anywhere is computed the same way. Every random draw here (dequantisation noise,
q(u|x)'s base draw, VAE / f-VAE latents, sampling latents) comes from one CPU generator and is
copied to the model's device (`flows.bpd.uniform_like`, `flows.bpd.normal`), so a seed gives
the same draws, and so the same numbers up to floating-point rounding, on any device.
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
    `generator` is an int seed or a CPU `torch.Generator` (to continue one stream over
    batches); None draws a seed from torch's global CPU stream.
    """
    if k < 1:
        raise ValueError(f"Expected k >= 1 draws per image, got {k}.")
    generator = cpu_generator(generator)
    device = next(model.parameters()).device
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    bpd.check_levels(x, model.n_bins)  # here: on a device, the objective skips the values
    x = x.to(device)
    with torch.no_grad():
        scores = model.bits_per_dim(x, k=k, generator=generator)
    return scores.double().cpu().numpy()


def sample_levels(model: DensityModel, n: int, temperature: float = 1.0,
                  generator: torch.Generator | int | None = 0) -> np.ndarray:
    """`n` samples at `temperature` as uint8 levels [n, C, H, W] (seeded as `score_levels`)."""
    with torch.no_grad():
        y = model.sample(n, temperature=temperature, generator=cpu_generator(generator))
    return model.to_levels(y).to(torch.uint8).cpu().numpy()


def cpu_generator(seed: torch.Generator | int | None) -> torch.Generator:
    """The scoring path's one noise source: a CPU generator (from an int seed, or seeded from
    torch's global CPU stream for None). A device generator is refused: its stream differs
    from the CPU one, so the same seed would give another number on another device."""
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    generator = bpd.as_generator(seed)
    if generator.device.type != "cpu":
        raise ValueError(f"Expected a CPU torch.Generator (noise is drawn on the CPU and "
                         f"copied to the model's device), got one on {generator.device}.")
    return generator
