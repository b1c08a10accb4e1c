"""Writing webdataset tar shards: lossless PNG samples, byte-reproducible, atomically renamed.

A sample is `{key}.png` (the image levels, grey or RGB), `{key}.cls` (the label in ASCII,
absent where the source has none) and `{key}.attr` (the binary attributes as ASCII '0'/'1',
one character per attribute in the manifest's `attributes` order; only where the source has
attributes: CelebA). Tar headers are fixed (mtime 0, uid/gid 0, user and group
"nfpipe", mode 0444, ustar), so the same samples give the same bytes. `data_prep.shard_reader`
reads them back, `data_prep.png.decode_png` decodes the images.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from data_prep import storage
from data_prep.manifest import ShardInfo
from data_prep.shard_reader import TAR_BLOCK
from data_prep.sources import Sample

PNG_COMPRESS_LEVEL = 1  # lossless at any level; at 32x32 the level barely moves speed or size
SHARD_NAME = "{split}-{index:05d}.tar"
SHARD_PATTERN = re.compile(r"^(train|val|test)-\d{5}(-\d+)?\.tar$")
TMP_PREFIX = ".tmp-"

Progress = Callable[[str, int, int], None]  # (split, samples written, split total)


def encode_image(image: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W, C) array, C in {1, 3}; the levels are stored as they are."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"Expected uint8 (H, W, 1|3) image, got {image.dtype} {image.shape}.")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def encode_flags(flags: np.ndarray) -> bytes:
    """A sample's `attr` member: ASCII '1' where the attribute is present, '0' where not."""
    return np.where(np.asarray(flags, bool), ord("1"), ord("0")).astype(np.uint8).tobytes()


def member_bytes(payload: int) -> int:
    """Bytes one tar member takes: a header block plus the payload padded to whole blocks."""
    return TAR_BLOCK + -(-payload // TAR_BLOCK) * TAR_BLOCK


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)


@dataclass(frozen=True)
class ShardGroup:
    """Blocks `first`..`last`-1 of a split, written by one task.

    Block b holds samples [b·max_count, (b+1)·max_count) and becomes shard `{split}-{b:05d}.tar`
    (when the byte limit cuts it, further pieces `{split}-{b:05d}-{p}.tar`). The cut points
    depend only on the samples, so any grouping of blocks gives byte-identical shards.
    """

    split: str
    first: int
    last: int
    start: int  # first sample
    stop: int  # one past the last sample


def plan_groups(split_counts: dict[str, int], max_count: int,
                groups_per_split: int = 1) -> list[ShardGroup]:
    """Every split's blocks cut into (at most) `groups_per_split` groups of equal size."""
    groups = []
    for split, total in split_counts.items():
        blocks = -(-total // max_count)
        step = max(1, -(-blocks // groups_per_split))
        for first in range(0, blocks, step):
            last = min(first + step, blocks)
            groups.append(ShardGroup(split, first, last, first * max_count,
                                     min(last * max_count, total)))
    return groups


@dataclass(frozen=True)
class ShardTarget:
    """Where a group's shards go and what is already there: `intact` maps the name of each
    shard verified against the previous manifest to its sha256 (such a shard is not written
    again when the new one is identical)."""

    folder: str  # absolute path or URL
    max_count: int
    max_bytes: int
    intact: dict[str, str] = field(default_factory=dict)


def write_group(target: ShardTarget, group: ShardGroup, samples: Iterable[Sample],
                progress: Callable[[int], None] | None = None) -> list[ShardInfo]:
    """Write a group's samples (in order) into its shards; `progress(done)` every 256."""
    staging = target.folder if not storage.is_remote(target.folder) else tempfile.mkdtemp(
        prefix="nfpipe-shards-")
    shards: list[ShardInfo] = []
    block_samples: list[Sample] = []
    block = group.first
    try:
        for done, sample in enumerate(samples, start=1):
            block_samples.append(sample)
            if len(block_samples) == target.max_count:
                shards += _write_block(target, staging, group.split, block, block_samples)
                block, block_samples = block + 1, []
            if progress is not None and done % 256 == 0:
                progress(done)
        if block_samples:
            shards += _write_block(target, staging, group.split, block, block_samples)
    finally:
        if staging != target.folder:
            shutil.rmtree(staging, ignore_errors=True)
    return shards


def _write_block(target: ShardTarget, staging: str, split: str, block: int,
                 samples: list[Sample]) -> list[ShardInfo]:
    """One block as one shard, or more where the byte limit cuts it."""
    shards, piece = [], 0
    writer = _ShardFile(Path(staging), _shard_name(split, block, piece))
    try:
        for key, image, label, attributes in samples:
            sample = {"__key__": key, "png": encode_image(image)}
            if label is not None:
                sample["cls"] = str(int(label)).encode("ascii")
            if attributes is not None:
                sample["attr"] = encode_flags(attributes)
            size = sum(member_bytes(len(v)) for k, v in sample.items() if k != "__key__")
            if writer.count and writer.size + size > target.max_bytes:
                shards.append(_commit(target, writer))
                piece += 1
                writer = _ShardFile(Path(staging), _shard_name(split, block, piece))
            writer.write(sample, size)
        shards.append(_commit(target, writer))
    except BaseException:
        writer.abort()
        raise
    return shards


def _shard_name(split: str, block: int, piece: int) -> str:
    name = SHARD_NAME.format(split=split, index=block)
    return name if piece == 0 else name.replace(".tar", f"-{piece}.tar")


def _commit(target: ShardTarget, writer: _ShardFile) -> ShardInfo:
    """Close the shard and move it into place, unless an identical one is there already."""
    info = writer.close()
    if target.intact.get(info.name) == info.sha256:
        writer.path.unlink()
    else:
        storage.put_file(writer.path, storage.join(target.folder, info.name))
    return info


class _ShardFile:
    """One tar shard being written under a temporary name in a local staging folder."""

    def __init__(self, staging: Path, name: str):
        self.name, self.path = name, staging / (TMP_PREFIX + name)
        self._file = open(self.path, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = wds.TarWriter(
            self._hashing, encoder=False, user="nfpipe", group="nfpipe", mode=0o444, mtime=0
        )
        self.count = self.size = 0

    def write(self, sample: dict, size: int) -> None:
        self._tar.write(sample)
        self.count += 1
        self.size += size

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return ShardInfo(name=self.name, count=self.count,
                         sha256=self._hashing.sha256.hexdigest())

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay; no manifest lists them)."""
        if not self._file.closed:
            self._tar.close()  # before the file: tarfile would flush into it when collected
            self._file.close()
        self.path.unlink(missing_ok=True)


def remove_leftovers(folder: str, keep: set[str] = frozenset()) -> None:
    """Delete temporary files of an interrupted run and shard files not in `keep`."""
    for name in storage.list_names(folder):
        stale_shard = SHARD_PATTERN.match(name) and name not in keep
        if name.startswith(TMP_PREFIX) or stale_shard:
            storage.remove(storage.join(folder, name))
