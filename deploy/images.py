"""Images in and out of the deploy commands: level grids as PNG, PNG files and shard tars in.

Levels are the model's integers in [0, n_bins). Shards and `data_prep` PNGs store the levels
as they are (e.g. 0..16 for digits); grids written for people are stretched to 0..255.
"""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

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
                    nrow: int | None = None) -> Path:
    """Write `levels` [n, C, H, W] as a PNG grid (`nrow` images per row, default ~sqrt(n))."""
    picture = level_grid(np.asarray(levels), n_bins, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture).save(path)
    return path


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [C, H, W] (grey gives C=1; an alpha channel is dropped)."""
    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode not in ("L", "RGB", "RGBA", "LA", "P", "I;16", "I"):
            raise ValueError(f"unsupported PNG mode {pil.mode}")
        if pil.mode in ("P", "RGBA"):
            pil = pil.convert("RGB")
        elif pil.mode == "LA":
            pil = pil.convert("L")
        array = np.asarray(pil)
    if array.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit PNG, got {array.dtype}")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_images(paths: list[str | Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, levels [C, H, W]) for every PNG file and every `.png` member of each shard tar."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".tar":
            yield from _read_shard(path)
            continue
        try:
            yield str(path), decode_png(path.read_bytes())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable PNG image or .tar shard ({err})") from None


def _read_shard(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".png"):
                key = member.name[: -len(".png")]
                yield f"{path.name}:{key}", decode_png(tar.extractfile(member).read())
