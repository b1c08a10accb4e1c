"""Raw datasets as a common `Source`: per split, an iterator of (key, image, label)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from data_prep.config import DataPrepConfig

# key: unique within the dataset, no dots (webdataset splits member names at the first dot);
# image: uint8 levels in [0, n_bins), shape (H, W, C); label: class index or None;
# attributes: bool flags [A] in the order of `Source.attributes`, or None (no attributes).
Sample = tuple[str, np.ndarray, int | None, np.ndarray | None]


@dataclass(frozen=True)
class Source:
    """A dataset ready to be sharded.

    `fingerprint` is a sha256 of the raw content (not paths or mtimes), so it identifies the
    data wherever it lies ("" when opened without it, as shard-writing tasks do);
    `split_counts` is known before any image is decoded. `read_range(split, start, stop)`
    yields samples start..stop-1 of a split in its fixed order. `classes` names the class
    labels, `attributes` the binary attributes each sample carries (CelebA's 40).
    """

    dataset: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    n_bins: int
    fingerprint: str
    split_counts: dict[str, int]
    read_range: Callable[[str, int, int], Iterator[Sample]] = field(repr=False)
    classes: list[str] | None = None
    attributes: list[str] | None = None

    def samples(self, split: str, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
        """The split's samples start..stop-1 (default: all) in a fixed order."""
        return self.read_range(split, start, self.split_counts[split] if stop is None else stop)


def open_source(cfg: DataPrepConfig, fingerprint: bool = True) -> Source:
    """The configured dataset; raises DataPrepError when the raw data is missing or damaged.

    `fingerprint=False` skips hashing the raw content (CelebA reads every image for it).
    """
    if cfg.dataset == "digits":
        from data_prep.sources.digits import open_digits

        return open_digits(cfg)
    if cfg.dataset == "cifar10":
        from data_prep.sources.cifar10 import open_cifar10

        return open_cifar10(cfg)
    from data_prep.sources.celeba import open_celeba

    return open_celeba(cfg, fingerprint)


def split_indices(
    n: int, seed: int, fractions: dict[str, float], rest: str = "train"
) -> dict[str, np.ndarray]:
    """Deterministic random split of range(n): each named share (at least 1 when > 0) by seed,
    the remainder to `rest`; indices sorted, so shards follow the source order."""
    order = np.random.default_rng(seed).permutation(n)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        take = max(1, round(fraction * n))
        out[name] = np.sort(order[start : start + take])
        start += take
    out[rest] = np.sort(order[start:])
    return out


