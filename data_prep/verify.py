"""Check a shard set against its manifest: every shard present with the sha256 it records.

Run on the driver before any training worker starts (a damaged shard is named in one line),
and by `prepare` before it declares a set up to date. The driver checks only the sha256
(`shard_reader.check_digest`, streamed, no tar parse): the loader checks the rest when it
reads a shard. `prepare` also checks each shard's sample count (`counts=True`, a full parse):
a manifest edited to lie about a count has the right sha256s, and only a rewrite repairs it.
Shards are checked a few at a time in threads: the hashing releases the GIL and object-store
reads overlap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from data_prep.errors import DataPrepError, ShardError
from data_prep.manifest import Manifest, ShardInfo
from data_prep.shard_reader import check_digest, read_shard

THREADS = 8


@dataclass(frozen=True)
class Damage:
    """One shard that does not match the manifest, and how."""

    location: str
    problem: str  # ShardError.problem: "shard is missing", "sha256 differs from …", …


def find_damage(manifest: Manifest, threads: int = THREADS,
                counts: bool = False) -> list[Damage]:
    """Every shard of every split that is missing, unreadable or has another sha256 (or, with
    `counts`, holds another number of samples or a broken tar than the manifest says)."""
    shards = [s for split in manifest.splits.values() for s in split.shards]
    with ThreadPoolExecutor(threads) as pool:
        found = pool.map(lambda shard: _check(manifest, shard, counts), shards)
        return [damage for damage in found if damage is not None]


def check_shards(manifest: Manifest, threads: int = THREADS) -> None:
    """Raise DataPrepError naming the first damaged shard (and how many are damaged)."""
    damaged = find_damage(manifest, threads)
    if not damaged:
        return
    total = sum(len(split.shards) for split in manifest.splits.values())
    first = damaged[0]
    raise DataPrepError(
        f"{first.location}: {first.problem} ({len(damaged)} of {total} shards damaged); run "
        "the data_prep stage again: it re-verifies the shards and rewrites the damaged ones"
    )


def intact_shards(manifest: Manifest, threads: int = THREADS) -> dict[str, str]:
    """name -> sha256 of the manifest's shards that are present and match it, sample count
    included."""
    damaged = {d.location for d in find_damage(manifest, threads, counts=True)}
    return {s.name: s.sha256 for split in manifest.splits.values() for s in split.shards
            if manifest.shard_location(s.name) not in damaged}


def _check(manifest: Manifest, shard: ShardInfo, counts: bool) -> Damage | None:
    location = manifest.shard_location(shard.name)
    try:
        if counts:
            read_shard(location, shard)
        else:
            check_digest(location, shard)
    except ShardError as exc:
        return Damage(location, exc.problem)
    return None
