"""Images in and out of the deploy commands: level grids as PNG, PNG files and shard tars in.

Levels are the model's integers in [0, n_bins). Shards and `data_prep` PNGs store the levels
as they are (e.g. 0..16 for digits); grids written for people are stretched to 0..255, and
`scale` enlarges each pixel to scale x scale (nearest neighbour) so small images can be seen.

Shards and PNG files are read and decoded by `data_prep` (`shard_reader`, `png`): a shard is
checked whole before any image is used, against the sha256 and count in the `manifest.json`
beside it when one lists it (else a warning says its length cannot be verified), for the
end-of-archive marker, and member by member; a bad one is a `data_prep.errors.ShardError`
naming the shard and what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import shard_reader
from data_prep.png import decode_png

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


def save_level_grid(levels: np.ndarray, n_bins: int, path: str | Path,
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


def read_images(paths: list[str | Path], warn: Callable[[str], None] = print,
                ) -> Iterator[tuple[str, np.ndarray]]:
    """(name, levels [C, H, W]) for every PNG file and every `.png` member of each shard tar."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".tar":
            yield from read_shard(path, warn)
            continue
        try:
            yield str(path), _channels_first(decode_png(path.read_bytes()))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable PNG image or .tar shard ({err})") from None


def read_shard(path: Path, warn: Callable[[str], None] = print,
               ) -> list[tuple[str, np.ndarray]]:
    """(`SHARD.tar:KEY`, levels [C, H, W]) of every sample of a shard, checked as the module
    says; ShardError on the first fault."""
    listed = shard_reader.listed_beside(path)
    if listed is None:
        warn(f"warning: {path}: no manifest.json beside it lists this shard, so its length "
             "cannot be verified")
    shard = shard_reader.read_shard(path, listed)
    return [(f"{path.name}:{sample.key}", _channels_first(shard_reader.decode_sample(sample)))
            for sample in shard.samples()]


def _channels_first(image: np.ndarray) -> np.ndarray:
    return image.transpose(2, 0, 1)
