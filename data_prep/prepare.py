"""`prepare(cfg)`: raw dataset -> shard folder + manifest, atomic and idempotent.

The output is a local folder or an object-store prefix (`data_prep.output_root` may be a
URL). Shards are written first and `manifest.json` last: the manifest is the commit marker,
so a reader that finds one finds every shard it lists.

Shard writing is cut into groups of blocks (see `shards.ShardGroup`). `prepare` runs them in
this process, or hands them to `map_fn` (the pipeline passes one that runs each group as a
Ray task); the shards are byte-identical either way.
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from data_prep import storage
from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.manifest import MANIFEST_NAME, Manifest, ShardInfo
from data_prep.shards import (
    SHARD_PATTERN,
    TMP_PREFIX,
    Progress,
    ShardGroup,
    ShardTarget,
    plan_groups,
    remove_leftovers,
    write_group,
)
from data_prep.sources import Source, open_source
from data_prep.verify import intact_shards

# Settings that shape the shards, per dataset; paths and `download` do not (the source
# fingerprint covers the content), so the manifest is the same on every machine.
SHAPING = {
    "digits": ("seed", "test_fraction", "val_fraction"),
    "cifar10": ("seed", "val_fraction"),
    "celeba": ("crop", "size", "n_bits", "val_fraction"),
}
LOCK_NAME = ".lock"

GroupTask = Callable[[ShardGroup], list[ShardInfo]]
# (task, groups) -> each group's shards, in the order of `groups` (builtins.map's contract)
MapFn = Callable[[GroupTask, list[ShardGroup]], Iterable[list[ShardInfo]]]


def prepare(cfg: DataPrepConfig, progress: Progress | None = None,
            map_fn: MapFn | None = None, groups_per_split: int = 1,
            force: bool = False) -> Path | str:
    """Write `{output_root}/{dataset}-{H}x{W}-{bits}bit/`; return its manifest (a Path when
    local, the URL when remote).

    Does nothing when a manifest with the same settings, source fingerprint and split counts
    is there and every shard it lists is present with its sample count and sha256 (unless
    `force`: then the manifest is always written anew). Otherwise the old manifest is removed
    first, the shards are written (those already present and identical are left as they are,
    so a rerun after damage rewrites only the damaged ones, and a rerun after a failure resumes),
    and the manifest is written last.
    `map_fn` runs the shard groups (`groups_per_split` per split) elsewhere, e.g. as Ray tasks.
    """
    source = open_source(cfg)
    folder = output_folder(cfg, source)
    storage.make_folder(folder)
    settings = shaping_config(cfg)
    manifest_at = storage.join(folder, MANIFEST_NAME)
    with _locked(folder):
        existing = _previous(manifest_at, source, settings)
        intact = (intact_shards(existing) if existing is not None
                  else _unlisted_shards(folder, manifest_at))
        if not force and existing is not None and len(intact) == _shard_count(existing):
            return _as_returned(existing.location)
        storage.remove(manifest_at)
        if not storage.is_remote(folder):
            remove_leftovers(folder, keep=_all_shard_names(folder))  # only temporaries
        target = ShardTarget(folder, cfg.max_count, cfg.shard_max_bytes, intact)
        splits = _write_splits(cfg, source, target, progress, map_fn, groups_per_split)
        remove_leftovers(folder, keep={s.name for v in splits.values() for s in v["shards"]})
        manifest = Manifest(
            dataset=source.dataset, image_shape=source.image_shape, n_bins=source.n_bins,
            classes=source.classes, attributes=source.attributes,
            source_fingerprint=source.fingerprint, config=settings,
            splits=splits,
        )
        return _as_returned(manifest.write(manifest_at))


def _write_splits(cfg: DataPrepConfig, source: Source, target: ShardTarget,
                  progress: Progress | None, map_fn: MapFn | None,
                  groups_per_split: int) -> dict[str, dict[str, Any]]:
    """Every split's shards, in order, written here or by `map_fn`."""
    groups = plan_groups(source.split_counts, cfg.max_count,
                         groups_per_split if map_fn is not None else 1)
    if map_fn is None:
        results = (_write_here(source, target, group, progress) for group in groups)
    else:
        results = map_fn(partial(write_group_task, cfg, target), groups)
    splits: dict[str, list[ShardInfo]] = {split: [] for split in source.split_counts}
    for group, shards in zip(groups, results, strict=True):
        splits[group.split] += shards
        if progress is not None and map_fn is not None:
            progress(group.split, group.stop, source.split_counts[group.split])
    out = {}
    for split, shards in splits.items():
        total = source.split_counts[split]
        written = sum(s.count for s in shards)
        if written != total:
            raise DataPrepError(f"{split}: source gave {written} samples, expected {total}")
        out[split] = {"count": written, "shards": shards}
    return out


def _write_here(source: Source, target: ShardTarget, group: ShardGroup,
                progress: Progress | None) -> list[ShardInfo]:
    total = source.split_counts[group.split]

    def report(done: int) -> None:
        if progress is not None:
            progress(group.split, group.start + done, total)

    shards = write_group(target, group, source.samples(group.split, group.start, group.stop),
                         report)
    report(group.stop - group.start)
    return shards


def write_group_task(cfg: DataPrepConfig, target: ShardTarget,
                     group: ShardGroup) -> list[ShardInfo]:
    """One group written by a worker process (a Ray task): it opens the source itself."""
    source = open_source(cfg, fingerprint=False)
    return write_group(target, group, source.samples(group.split, group.start, group.stop))


def output_folder(cfg: DataPrepConfig, source: Source) -> str:
    """`{output_root}/{dataset}-{H}x{W}-{bits}bit` (absolute path or URL), bits =
    ceil(log2 n_bins) (digits: 5)."""
    _, height, width = source.image_shape
    bits = math.ceil(math.log2(source.n_bins))
    return storage.join(storage.absolute(cfg.output_root),
                        f"{source.dataset}-{height}x{width}-{bits}bit")


def shaping_config(cfg: DataPrepConfig) -> dict[str, Any]:
    """The settings recorded in the manifest and compared on re-runs."""
    names = ("dataset", "shard_max_count", "shard_max_bytes", *SHAPING[cfg.dataset])
    settings = cfg.model_dump(mode="json", include=set(names))
    settings["shard_max_count"] = cfg.max_count
    return settings


def _previous(location: str, source: Source, settings: dict[str, Any]) -> Manifest | None:
    """The manifest at `location` when it describes exactly this source and settings, with
    each split's count as the source gives it and as its shards add up to."""
    try:
        manifest = Manifest.load(location)
    except DataPrepError:
        return None
    if manifest.source_fingerprint != source.fingerprint or manifest.config != settings:
        return None
    counts = {name: split.count for name, split in manifest.splits.items()}
    if counts != source.split_counts or any(
            split.count != sum(s.count for s in split.shards)
            for split in manifest.splits.values()):
        return None
    return manifest


def _shard_count(manifest: Manifest) -> int:
    return sum(len(split.shards) for split in manifest.splits.values())


def _as_returned(location: str) -> Path | str:
    return location if storage.is_remote(location) else Path(location)


def _all_shard_names(folder: str) -> set[str]:
    return {name for name in storage.list_names(folder)
            if not name.startswith((".", TMP_PREFIX))}


def _unlisted_shards(folder: str, manifest_at: str) -> dict[str, str]:
    """name -> sha256 of the shards an interrupted run wrote (no manifest yet), so a rerun
    resumes: a shard whose bytes come out the same is not written again. With a manifest of
    other settings in place the old shards are not read: they will not match."""
    if storage.exists(manifest_at):
        return {}
    return {name: storage.sha256_of(storage.join(folder, name))
            for name in _all_shard_names(folder) if SHARD_PATTERN.match(name)}


@contextmanager
def _locked(folder: str) -> Iterator[None]:
    """One writer per local shard folder (e.g. several trials preparing the same data at once).

    Object stores have no locks; two writers there write the same bytes (shards are
    deterministic) and the manifest last, so they cannot leave a mixed set either.
    """
    if storage.is_remote(folder):
        yield
        return
    with open(Path(folder) / LOCK_NAME, "a") as lock:  # "a": a no-op run changes no mtime
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
