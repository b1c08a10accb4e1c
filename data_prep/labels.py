"""A split's images with their binary attributes: what attribute directions are computed from.

A shard set's attributes are CelebA's (the manifest's `attributes`, each sample's `KEY.attr`
flags) or, for a labelled data set (CIFAR-10, digits), its classes one-vs-rest: attribute
"3" is present exactly on the images of class 3, derived from `KEY.cls` and the manifest's
`classes`, with nothing more stored.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_prep.errors import DataPrepError, ShardError
from data_prep.loader import decode_images, in_chunks, samples_between
from data_prep.manifest import Manifest
from data_prep.shard_reader import ATTRIBUTES, LABEL, ShardSample

LabelledBatch = tuple[np.ndarray, np.ndarray]  # levels uint8 [B, C, H, W], flags bool [B, A]


def attribute_names(manifest: Manifest) -> list[str]:
    """The attributes of a shard set: CelebA's, else its classes (one-vs-rest), else none."""
    return list(manifest.attributes or manifest.classes or [])


def labelled_batches(manifest: Manifest, split: str, batch_size: int,
                     limit: int | None = None) -> Iterator[LabelledBatch]:
    """The first `limit` (default all) images of `split` in manifest order, with their flags
    over `attribute_names(manifest)`; a shard set without labels is a DataPrepError."""
    names = attribute_names(manifest)
    if not names:
        raise DataPrepError(f"{manifest.location}: these {manifest.dataset} shards carry no "
                            "attributes or class labels to compute attribute directions from")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}.")
    count = manifest.split(split).count
    total = count if limit is None else min(limit, count)
    samples = samples_between(manifest.folder, manifest.split(split).shards, 0, total)
    for chunk in in_chunks(samples, batch_size):
        flags = np.stack([_flags(manifest, sample, len(names)) for sample in chunk])
        yield decode_images(chunk, tuple(manifest.image_shape)), flags


def _flags(manifest: Manifest, sample: ShardSample, n: int) -> np.ndarray:
    """A sample's flags [n]: its `attr` member, or its class one-hot."""
    if manifest.attributes:
        if sample.attributes is None or len(sample.attributes) != n:
            got = "none" if sample.attributes is None else len(sample.attributes)
            raise ShardError(sample.location, f"member '{sample.key}.{ATTRIBUTES}' should hold "
                                              f"{n} attribute flags (manifest.json), got {got}")
        return sample.attributes
    if not 0 <= sample.label < n:
        raise ShardError(sample.location, f"member '{sample.key}.{LABEL}' should be a class in "
                                          f"0..{n - 1} (manifest.json), got {sample.label}")
    return np.arange(n) == sample.label
