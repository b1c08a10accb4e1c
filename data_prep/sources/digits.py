"""scikit-learn's bundled 8x8 handwritten digits: 1797 images, levels 0..16 (n_bins = 17)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from data_prep.config import DataPrepConfig
from data_prep.sources import Sample, Source, split_indices

N_BINS = 17  # pixel values are counts 0..16 of a 4x4 block


def open_digits(cfg: DataPrepConfig) -> Source:
    """Split train/test (and val) by `cfg.seed`; offline, nothing to download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1), exact: values are ints
    labels = bunch.target.astype(np.int64)
    fingerprint = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    fractions = {"test": cfg.test_fraction, "val": cfg.val_fraction}
    indices = split_indices(len(images), cfg.seed, fractions)

    def read_range(split: str, start: int, stop: int) -> Iterator[Sample]:
        for i in indices[split][start:stop]:
            yield f"digits{i:04d}", images[i], int(labels[i]), None

    return Source(
        dataset="digits",
        image_shape=(1, 8, 8),
        n_bins=N_BINS,
        fingerprint=fingerprint,
        split_counts={name: len(indices[name]) for name in ("train", "val", "test")
                      if name in indices},
        read_range=read_range,
        classes=[str(d) for d in range(10)],
    )
