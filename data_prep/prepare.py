"""`prepare(cfg)`: raw dataset -> shard folder + manifest, atomic and idempotent."""

from __future__ import annotations

import fcntl
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.manifest import MANIFEST_NAME, Manifest
from data_prep.shards import Progress, remove_leftovers, write_split
from data_prep.sources import Source, open_source, sha256_file

# Settings that shape the shards, per dataset; paths and `download` do not (the source
# fingerprint covers the content), so the manifest is the same on every machine.
SHAPING = {
    "digits": ("seed", "test_fraction", "val_fraction"),
    "cifar10": ("seed", "val_fraction"),
    "celeba": ("crop", "size", "n_bits", "val_fraction"),
}
LOCK_NAME = ".lock"


def prepare(cfg: DataPrepConfig, progress: Progress | None = None) -> Path:
    """Write `{output_root}/{dataset}-{H}x{W}-{bits}bit/` and return its manifest path.

    Does nothing when a manifest with the same settings and source fingerprint is there and
    every shard it lists is present with its sha256. Otherwise the old manifest is removed
    first, shards are written under temporary names and renamed, and the manifest is written
    last (atomically), so an interrupted run never leaves a set that looks complete.
    """
    source = open_source(cfg)
    folder = output_folder(cfg, source)
    folder.mkdir(parents=True, exist_ok=True)
    settings = shaping_config(cfg)
    with _locked(folder):
        existing = _matching_manifest(folder / MANIFEST_NAME, source, settings)
        if existing is not None:
            return existing
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        remove_leftovers(folder, keep=_all_shard_names(folder))  # only temporaries
        splits = {}
        for split, total in source.split_counts.items():
            shards = write_split(folder, split, source.samples(split), total,
                                 max_count=cfg.max_count, max_bytes=cfg.shard_max_bytes,
                                 progress=progress)
            splits[split] = {"count": sum(s.count for s in shards), "shards": shards}
            if splits[split]["count"] != total:
                raise DataPrepError(f"{split}: source gave {splits[split]['count']} samples, "
                                    f"expected {total}")
        remove_leftovers(folder, keep={s.name for v in splits.values() for s in v["shards"]})
        manifest = Manifest(
            dataset=source.dataset, image_shape=source.image_shape, n_bins=source.n_bins,
            classes=source.classes, source_fingerprint=source.fingerprint, config=settings,
            splits=splits,
        )
        return manifest.write(folder / MANIFEST_NAME)


def output_folder(cfg: DataPrepConfig, source: Source) -> Path:
    """`{output_root}/{dataset}-{H}x{W}-{bits}bit`, bits = ceil(log2 n_bins) (digits: 5)."""
    _, height, width = source.image_shape
    bits = math.ceil(math.log2(source.n_bins))
    return Path(cfg.output_root) / f"{source.dataset}-{height}x{width}-{bits}bit"


def shaping_config(cfg: DataPrepConfig) -> dict[str, Any]:
    """The settings recorded in the manifest and compared on re-runs."""
    names = ("dataset", "shard_max_count", "shard_max_bytes", *SHAPING[cfg.dataset])
    settings = cfg.model_dump(mode="json", include=set(names))
    settings["shard_max_count"] = cfg.max_count
    return settings


def _matching_manifest(path: Path, source: Source, settings: dict[str, Any]) -> Path | None:
    """`path` when it describes exactly this source and settings, with every shard intact."""
    try:
        manifest = Manifest.load(path)
    except DataPrepError:
        return None
    if manifest.source_fingerprint != source.fingerprint or manifest.config != settings:
        return None
    for split in manifest.splits.values():
        for shard in split.shards:
            shard_path = path.parent / shard.name
            if not shard_path.is_file() or sha256_file(shard_path) != shard.sha256:
                return None
    return path


def _all_shard_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer per shard folder (e.g. several trials preparing the same data at once)."""
    with open(folder / LOCK_NAME, "a") as lock:  # "a": a no-op run changes no mtime
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
