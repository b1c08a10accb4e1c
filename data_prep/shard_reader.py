"""Reading tar shards: one parser and one set of checks for the loader, `verify` and deploy.

A shard is read whole into memory (a few MB; one GET on an object store) and checked before
any sample is used: its tar headers, the end-of-archive marker, and, against the manifest's
entry when there is one, its sample count and sha256. Samples are checked as they are taken:
`KEY.png` (the image), an optional `KEY.cls` (the label in ASCII) and an optional `KEY.attr`
(attribute flags, ASCII '0'/'1'), nothing else. Every
fault is a `ShardError` naming the shard (and the member) and saying what is wrong.

The tar parser is a small ustar reader for the shards `data_prep.shards` writes, about 10x
faster than `tarfile` on 3 KB members, which matters at 32x32 (benchmarks/RESULTS.md, Loader).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from data_prep import storage
from data_prep.errors import DataPrepError, ShardError
from data_prep.manifest import MANIFEST_NAME, Manifest, ShardInfo
from data_prep.png import decode_png

TAR_BLOCK = 512
ZERO_BLOCK = bytes(TAR_BLOCK)
IMAGE, LABEL, ATTRIBUTES = "png", "cls", "attr"  # the members of a sample, by suffix
LAYOUT = "expected KEY.png images, KEY.cls labels and KEY.attr attribute flags"
SHA256_DIFFERS = "sha256 differs from manifest.json's (truncated or changed)"


class ShardSample(NamedTuple):
    """One sample of a shard, still encoded: its image is PNG bytes, its label -1 when none,
    its attribute flags bool [A] or None."""

    location: str
    key: str
    png: bytes
    label: int
    attributes: np.ndarray | None = None


@dataclass(frozen=True)
class Shard:
    """A shard whose tar structure (and manifest entry, when given) has been checked."""

    location: str
    members: list[dict[str, bytes | str]]  # per sample: "__key__" and the payload by suffix

    def __len__(self) -> int:
        return len(self.members)

    def samples(self, lo: int = 0, hi: int | None = None) -> Iterator[ShardSample]:
        """Samples lo..hi-1, each checked to be an image and an optional label."""
        for members in self.members[lo:hi]:
            yield self._sample(members)

    def _sample(self, members: dict[str, bytes | str]) -> ShardSample:
        key, png, label = members["__key__"], members.get(IMAGE), members.get(LABEL)
        attributes = members.get(ATTRIBUTES)
        if png is None or len(members) != 2 + (label is not None) + (attributes is not None):
            raise ShardError(self.location, self._layout_problem(members))
        try:
            number = -1 if label is None else int(label)
        except ValueError:
            raise ShardError(self.location, f"member '{key}.{LABEL}' is not a class label "
                                            f"({label[:20]!r})") from None
        flags = None if attributes is None else self._flags(key, attributes)
        return ShardSample(self.location, key, png, number, flags)

    def _flags(self, key: str, data: bytes) -> np.ndarray:
        array = np.frombuffer(data, dtype=np.uint8)
        if not len(array) or not np.isin(array, (ord("0"), ord("1"))).all():
            raise ShardError(self.location, f"member '{key}.{ATTRIBUTES}' is not attribute "
                                            f"flags (ASCII '0'/'1'; got {data[:20]!r})")
        return array == ord("1")

    @staticmethod
    def _layout_problem(members: dict[str, bytes | str]) -> str:
        key = members["__key__"]
        foreign = sorted(members.keys() - {"__key__", IMAGE, LABEL, ATTRIBUTES})
        if foreign:
            return f"member '{key}.{foreign[0]}' is not a sample of an image shard ({LAYOUT})"
        return f"sample '{key}' has no image ({LAYOUT})"


def read_shard(location: str | os.PathLike, expected: ShardInfo | None = None) -> Shard:
    """The shard at `location` (a path or a URL), checked whole (see the module doc)."""
    location = str(location)
    with _reading(location):
        data = storage.read_bytes(location)
    return parse_shard(location, data, expected)


def parse_shard(location: str, data: bytes, expected: ShardInfo | None = None) -> Shard:
    """The shard held in `data`; ShardError listing everything found wrong with it (the
    structure or the count first, the sha256 last)."""
    members: list[dict[str, bytes | str]] = []
    try:
        members, complete = read_samples(data)
    except ValueError as exc:
        problems = [str(exc)]
    else:
        problems = _count_problems(len(members), complete, expected)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected.sha256:
        problems.append(SHA256_DIFFERS)
    if problems:
        raise ShardError(location, "; ".join(problems))
    return Shard(location, members)


def _count_problems(count: int, complete: bool, expected: ShardInfo | None) -> list[str]:
    problems = []
    if expected is not None and count != expected.count:
        problems.append(f"holds {count} samples, the manifest says {expected.count}")
    if not complete:
        problems.append(f"truncated: it ends after {count} images without the tar "
                        "end-of-archive marker")
    return problems


def check_digest(location: str, expected: ShardInfo) -> None:
    """The shard's sha256 against the manifest, streamed (no parse): ShardError if it differs."""
    with _reading(location):
        digest = storage.sha256_of(location)
    if digest != expected.sha256:
        raise ShardError(location, SHA256_DIFFERS)


@contextmanager
def _reading(location: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise ShardError(location, "shard is missing") from None
    except OSError as exc:
        raise ShardError(location, f"shard is unreadable ({exc})") from None


def decode_sample(sample: ShardSample) -> np.ndarray:
    """The sample's image as uint8 (H, W, C); ShardError naming the member if it does not
    decode."""
    try:
        return decode_png(sample.png)
    except ValueError as exc:
        raise ShardError(sample.location, f"member '{sample.key}.{IMAGE}' is not a PNG image "
                                          f"({exc})") from None


def listed_beside(location: str | os.PathLike) -> ShardInfo | None:
    """The manifest entry of a shard in the `manifest.json` beside it, or None (no manifest, or
    one that does not list it)."""
    location = str(location)
    manifest_location = storage.join(storage.parent(location), MANIFEST_NAME)
    if not storage.is_file(manifest_location):
        return None
    try:
        manifest = Manifest.load(manifest_location)
    except DataPrepError as exc:
        raise DataPrepError(f"{manifest_location}: cannot read it to verify "
                            f"{storage.name_of(location)} ({exc})") from None
    name = storage.name_of(location)
    listed = (s for split in manifest.splits.values() for s in split.shards if s.name == name)
    return next(listed, None)


def read_samples(data: bytes) -> tuple[list[dict[str, bytes | str]], bool]:
    """Samples of a tar held in memory, grouped by key as webdataset does; and whether the
    end-of-archive marker was reached. A broken tar raises ValueError with the reason."""
    samples: list[dict[str, bytes | str]] = []
    pos, last = 0, None
    while pos + TAR_BLOCK <= len(data):
        header = data[pos : pos + TAR_BLOCK]
        if header == ZERO_BLOCK:
            return samples, True
        try:
            name, size = _parse_header(header, pos)
        except ValueError as exc:
            raise _unreadable(last, exc) from None
        pos += TAR_BLOCK
        blocks = -(-size // TAR_BLOCK) * TAR_BLOCK  # the payload padded to whole blocks
        if pos + blocks > len(data):
            raise _unreadable(last, f"member {name!r} cut short: {len(data) - pos} of {blocks} "
                                    "bytes")
        payload = data[pos : pos + size]
        pos += blocks
        if name is None:  # a folder
            continue
        last = name
        key, _, suffix = name.partition(".")
        if not samples or samples[-1]["__key__"] != key:
            samples.append({"__key__": key})
        samples[-1][suffix.lower()] = payload
    return samples, False


def _unreadable(last: str | None, reason: object) -> ValueError:
    after = f" after member {last!r}" if last else ""
    return ValueError(f"not a readable tar shard{after} ({reason})")


def _parse_header(header: bytes, offset: int) -> tuple[str | None, int]:
    """(name, size) of a ustar header, checksum verified; the name is None for a folder."""
    try:
        checksum = int(header[148:156].split(b"\0")[0].strip() or b"-1", 8)
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        raise ValueError(f"garbled tar header at byte {offset}") from None
    if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
        raise ValueError(f"tar header checksum mismatch at byte {offset}")
    kind = header[156:157]
    if kind == b"5":
        return None, size
    if kind not in (b"0", b"\0"):
        raise ValueError(f"unexpected tar member type {kind!r} at byte {offset}")
    name = header[:100].split(b"\0")[0].decode()
    prefix = header[345:500].split(b"\0")[0].decode()
    return (f"{prefix}/{name}" if prefix else name).rsplit("/", 1)[-1], size
