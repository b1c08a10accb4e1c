"""Pictures: sample grids as PNG (interpolation strips: `flows.latents.interpolate`).

`save_level_grid` is nfpipe's one grid writer (training checkpoints, the evaluate stage and
the deploy commands all write through it): levels, the model's integers in [0, n_bins), are
stretched to 0..255 for people, and `scale` enlarges each pixel to scale x scale (nearest
neighbour) so small images can be seen.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flows.density import DensityModel
from flows.scoring import sample_levels

GRID_PAD = 2  # pixels between images and around the grid


def grid_shape(n: int, image_hw: tuple[int, int], nrow: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels of the grid `save_level_grid` writes for `n` images."""
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = image_hw
    return rows * (h + GRID_PAD) + GRID_PAD, cols * (w + GRID_PAD) + GRID_PAD


def level_grid(levels: np.ndarray, n_bins: int, nrow: int | None = None) -> np.ndarray:
    """uint8 levels [n, C, H, W] -> one uint8 picture (H', W', C), levels stretched to 0..255."""
    n, c, h, w = levels.shape
    cols = nrow or math.ceil(math.sqrt(n))
    height, width = grid_shape(n, (h, w), cols)
    canvas = np.zeros((height, width, c), dtype=np.uint8)
    pixels = (levels.astype(np.float64) * (255.0 / max(n_bins - 1, 1))).round().astype(np.uint8)
    for i in range(n):
        top = GRID_PAD + (i // cols) * (h + GRID_PAD)
        left = GRID_PAD + (i % cols) * (w + GRID_PAD)
        canvas[top:top + h, left:left + w] = pixels[i].transpose(1, 2, 0)
    return canvas


def save_level_grid(levels: np.ndarray, n_bins: int, path: str | os.PathLike,
                    nrow: int | None = None, scale: int = 1) -> Path:
    """Write `levels` [n, C, H, W] as a PNG grid (`nrow` images per row, default ~sqrt(n)),
    every pixel repeated `scale` x `scale` times (nearest-neighbour upscaling)."""
    picture = level_grid(np.asarray(levels), n_bins, nrow)
    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture).save(path)
    return path


def save_sample_grid(model: DensityModel, path: str | os.PathLike, n: int = 64,
                     temperature: float = 1.0, nrow: int | None = None,
                     generator: torch.Generator | int | None = 0) -> Path:
    """Sample n images at `temperature` (seeded: `flows.scoring.sample_levels`, a CPU
    stream) and write them as one PNG grid; returns its path."""
    levels = sample_levels(model, n, temperature, generator)
    return save_level_grid(levels, model.n_bins, path, nrow)
