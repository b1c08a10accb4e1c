"""Images into the deploy commands: PNG files and shard tars (grids out: `flows.viz`).

Levels are the model's integers in [0, n_bins). Shards and `data_prep` PNGs store the levels
as they are (e.g. 0..16 for digits).

A shard read for scoring is checked whole before any image is used: against the sha256 and
count in the `manifest.json` beside it when one lists it (else a warning says its length
cannot be verified), for the end-of-archive marker (a shard cut at a member boundary has none),
and member by member (`KEY.png` images, `KEY.cls` labels): a bad one is a `ShardError`
naming the shard and the member.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

TAR_END = bytes(1024)  # the end-of-archive marker: two zero blocks
SHARD_MEMBERS = (".png", ".cls")  # what data_prep writes per sample


class ShardError(ValueError):
    """A shard that cannot be scored as it is; the message names the shard and member."""


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [C, H, W] (grey gives C=1; an alpha channel is dropped)."""
    try:
        opened = Image.open(io.BytesIO(data), formats=["PNG"])
    except UnidentifiedImageError:
        raise ValueError(f"not a PNG file (starts with {data[:8]!r})") from None
    with opened as pil:
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


def read_images(paths: list[str | Path], warn: Callable[[str], None] = print,
                ) -> Iterator[tuple[str, np.ndarray]]:
    """(name, levels [C, H, W]) for every PNG file and every `.png` member of each shard tar."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".tar":
            yield from read_shard(path, warn)
            continue
        try:
            yield str(path), decode_png(path.read_bytes())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable PNG image or .tar shard ({err})") from None


def read_shard(path: Path, warn: Callable[[str], None] = print,
               ) -> list[tuple[str, np.ndarray]]:
    """Every image of a shard, checked as the module says; ShardError on the first fault."""
    data = path.read_bytes()
    listed = manifest_entry(path)
    if listed is None:
        warn(f"warning: {path}: no manifest.json beside it lists this shard, so its length "
             "cannot be verified")
    elif hashlib.sha256(data).hexdigest() != listed.sha256:
        raise ShardError(f"{path}: its sha256 differs from manifest.json's (truncated or "
                         f"changed; the manifest lists {listed.count} samples); write the "
                         "shards again with the data_prep stage")
    images = _shard_images(path, data)
    if listed is not None and len(images) != listed.count:
        raise ShardError(f"{path}: {len(images)} images, manifest.json lists {listed.count}")
    return images


def manifest_entry(path: Path):
    """The `ShardInfo` of `path` in the manifest.json beside it, or None."""
    from data_prep import Manifest

    manifest_path = path.parent / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = Manifest.load(manifest_path)
    except Exception as err:  # noqa: BLE001 - any unreadable manifest is reported the same way
        raise ShardError(f"{manifest_path}: cannot read it to verify {path.name} ({err})") from None
    for split in manifest.splits.values():
        for shard in split.shards:
            if shard.name == path.name:
                return shard
    return None


def _shard_images(path: Path, data: bytes) -> list[tuple[str, np.ndarray]]:
    images, last = [], None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                last = member.name
                image = _member_image(path, tar, member)
                if image is not None:
                    images.append((f"{path.name}:{member.name[:-len('.png')]}", image))
            end = tar.offset
    except tarfile.TarError as err:
        after = f" after member {last!r}" if last else ""
        raise ShardError(f"{path}: not a readable tar shard{after} ({err})") from None
    if data[end:end + len(TAR_END)] != TAR_END:
        raise ShardError(f"{path}: truncated: it ends after {len(images)} images without the "
                         "tar end-of-archive marker")
    return images


def _member_image(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo):
    """The levels of a `.png` member; None for a label or a folder; ShardError otherwise."""
    where = f"{path}: member {member.name!r}"
    if member.isdir() or (member.isfile() and member.name.endswith(".cls")):
        return None
    if not member.isfile() or not member.name.endswith(SHARD_MEMBERS):
        raise ShardError(f"{where} is not a sample of an image shard (expected KEY.png images "
                         "and KEY.cls labels)")
    try:
        return decode_png(tar.extractfile(member).read())
    except tarfile.TarError as err:
        raise ShardError(f"{where} is cut short ({err})") from None
    except (OSError, ValueError) as err:
        raise ShardError(f"{where} is not a PNG image ({err})") from None
