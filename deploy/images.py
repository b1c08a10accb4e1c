"""Images into the deploy commands: PNG files and shard tars (grids out: `flows.viz`).

Levels are the model's integers in [0, n_bins). Shards and `data_prep` PNGs store the levels
as they are (e.g. 0..16 for digits).

Shards and PNG files are read and decoded by `data_prep` (`shard_reader`, `png`): a shard is
checked whole before any image is used, against the sha256 and count in the `manifest.json`
beside it when one lists it (else a warning says its length cannot be verified), for the
end-of-archive marker, and member by member; a bad one is a `data_prep.errors.ShardError`
naming the shard and what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from data_prep import shard_reader
from data_prep.png import decode_png


def read_images(paths: list[str | Path], warn: Callable[[str], None] = print,
                ) -> Iterator[tuple[str, np.ndarray]]:
    """(name, levels [C, H, W]) for every PNG file, every `.png` member of each shard tar and
    every image of each `.npy` array of levels (`deploy sample --out x.npy`)."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".tar":
            yield from read_shard(path, warn)
            continue
        if path.suffix == ".npy":
            yield from read_levels(path)
            continue
        try:
            yield str(path), _channels_first(decode_png(path.read_bytes()))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable PNG image or .tar shard ({err})") from None


def read_levels(path: Path) -> list[tuple[str, np.ndarray]]:
    """(`FILE.npy:INDEX`, levels [C, H, W]) of an unsigned-integer array [N, C, H, W]."""
    try:
        levels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    if levels.ndim != 4 or levels.dtype.kind != "u":
        raise ValueError(f"{path}: expected unsigned integer levels [N, C, H, W], got "
                         f"{levels.dtype} {tuple(levels.shape)}")
    return [(f"{path.name}:{i}", image) for i, image in enumerate(levels)]


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
