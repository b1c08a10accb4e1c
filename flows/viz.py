"""Pictures: a grid of samples, and interpolation between two images in latent space."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from flows.density import DensityModel


def levels_to_unit(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Integer levels -> floats in [0, 1] for display."""
    return x.float() / (n_bins - 1)


@torch.no_grad()
def save_sample_grid(model: DensityModel, path: str | os.PathLike, n: int = 64,
                     temperature: float = 1.0, nrow: int = 8,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample n images at `temperature`, save them as one PNG grid; returns the grid [3, H, W]."""
    x = model.to_levels(model.sample(n, temperature, generator=generator))
    grid = make_grid(levels_to_unit(x, model.n_bins).cpu(), nrow=nrow, padding=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
    return grid


def _as_batch(x: torch.Tensor, model: DensityModel) -> torch.Tensor:
    x = x if x.dim() == 4 else x.unsqueeze(0)
    # the centre of each bin: a deterministic dequantisation
    return ((x.to(model.device).float() + 0.5) / model.n_bins - 0.5)


@torch.no_grad()
def interpolate(model: DensityModel, x_a: torch.Tensor, x_b: torch.Tensor,
                n: int = 8) -> torch.Tensor:
    """n images (endpoints included) along the straight line between the latents of x_a, x_b.

    x_a, x_b: integer levels [C, H, W] or [1, C, H, W]. Exact flows use z = encode(y); the
    variational models their posterior mean. Returns levels uint8 [n, C, H, W].
    """
    if n < 2:
        raise ValueError(f"Expected n >= 2 interpolation points, got {n}.")
    y = torch.cat([_as_batch(x_a, model), _as_batch(x_b, model)])
    z = model.encode(y)[0] if model.exact else model.encode_mean(y)
    t = torch.linspace(0, 1, n, device=z.device)[:, None]
    return model.to_levels(model.decode((1 - t) * z[:1] + t * z[1:]))
