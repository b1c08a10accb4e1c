"""CelebA, aligned and cropped: center crop, resize, keep `n_bits` per channel.

Layout (official): `img_align_celeba/NNNNNN.jpg` (178x218 RGB), `list_eval_partition.txt`
with lines `NNNNNN.jpg P`, P = 0 train, 1 val, 2 test, and `list_attr_celeba.txt`, the 40
attributes of every image (`celeba_attributes`), stored with each image in the shards. The
crop-148-resize-64, 5-bit recipe follows common practice for flows on CelebA (RealNVP, Glow).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep import storage
from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.sources import Sample, Source
from data_prep.sources.celeba_attributes import (
    ATTRIBUTES,
    AttributeTable,
    check_covers,
    parse_attributes,
)

IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
SPLIT_OF = {0: "train", 1: "val", 2: "test"}
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def open_celeba(cfg: DataPrepConfig, fingerprint: bool = True) -> Source:
    """Check the layout, read the partition and attribute files and (unless told not to)
    fingerprint them and every listed image. The folder may be local or on an object store."""
    root = _check_layout(cfg.source)
    partition = storage.join(root, PARTITION)
    listing = _read_partition(partition)
    names = {split: [n for n, s in listing if s == split] for split in ("train", "val", "test")}
    for split, files in names.items():
        if not files:
            raise DataPrepError(f"{partition}: lists no {split} images")
    attributes_at = storage.join(root, ATTRIBUTES)
    attributes_text = storage.read_bytes(attributes_at)
    table = _read_attributes(attributes_at, attributes_text)
    digest = _fingerprint(root, listing, attributes_text) if fingerprint else ""
    check_covers(attributes_at, table, [name for name, _ in listing], partition)

    def read_range(split: str, start: int, stop: int) -> Iterator[Sample]:
        chosen = names[split][start:stop]
        locations = [storage.join(root, IMAGES, name) for name in chosen]
        for name, location, data in zip(chosen, locations, _read_images(root, chosen),
                                        strict=True):
            yield name.split(".")[0], _load(location, data, cfg), None, table.flags[name]

    return Source(
        dataset="celeba",
        image_shape=(3, cfg.size, cfg.size),
        n_bins=2**cfg.n_bits,
        fingerprint=digest,
        split_counts={split: len(files) for split, files in names.items()},
        read_range=read_range,
        attributes=table.names,
    )


def _check_layout(source: str | None) -> str:
    if source is None:
        raise DataPrepError(
            f"data_prep.source is not set for celeba: set it to the folder holding {IMAGES}/, "
            f"{PARTITION} and {ATTRIBUTES} (the 'Align&Cropped Images', 'Eval' and 'Anno' "
            f"files from {HOME})"
        )
    root = str(source).rstrip("/")
    if not storage.is_dir(root):
        raise DataPrepError(
            f"{root}: CelebA folder not found; it must hold {IMAGES}/, {PARTITION} and "
            f"{ATTRIBUTES} (from {HOME})"
        )
    if not storage.is_dir(storage.join(root, IMAGES)):
        raise DataPrepError(
            f"{storage.join(root, IMAGES)}: folder not found; extract img_align_celeba.zip "
            f"(from {HOME}) into {root}"
        )
    partition = storage.join(root, PARTITION)
    if not storage.is_file(partition):
        raise DataPrepError(
            f"{partition}: partition file not found; put Eval/{PARTITION} (from {HOME}) at "
            f"{partition}"
        )
    attributes = storage.join(root, ATTRIBUTES)
    if not storage.is_file(attributes):
        raise DataPrepError(
            f"{attributes}: attribute file not found; put Anno/{ATTRIBUTES} (from {HOME}) at "
            f"{attributes}"
        )
    return root


def _read_attributes(location: str, data: bytes) -> AttributeTable:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataPrepError(f"{location}: not CelebA's {ATTRIBUTES} (not ASCII text: {exc}); "
                            f"download Anno/{ATTRIBUTES} from {HOME} again") from None
    return parse_attributes(location, text)


def _read_images(root: str, names: list[str]) -> Iterator[bytes]:
    """The bytes of each listed image, in order; a missing one is named."""
    locations = [storage.join(root, IMAGES, name) for name in names]
    try:
        yield from storage.read_many(locations)
    except FileNotFoundError as exc:
        missing = exc.filename or exc
        raise DataPrepError(
            f"{missing}: image listed in {storage.join(root, PARTITION)} is missing; "
            "re-extract img_align_celeba.zip or remove the line from the partition file"
        ) from None


def _read_partition(location: str) -> list[tuple[str, str]]:
    """(file name, split) per line, in file order."""
    listing = []
    text = storage.read_bytes(location).decode()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in SPLIT_OF \
                or "/" in parts[0]:
            raise DataPrepError(
                f"{location}:{number}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}"
            )
        listing.append((parts[0], SPLIT_OF[int(parts[1])]))
    if not listing:
        raise DataPrepError(f"{location}: partition file is empty")
    return listing


def _fingerprint(root: str, listing: list[tuple[str, str]], attributes: bytes) -> str:
    """sha256 over the partition, the attributes and the bytes of every listed image
    (content, not mtimes)."""
    digest = hashlib.sha256(storage.read_bytes(storage.join(root, PARTITION)))
    digest.update(hashlib.sha256(attributes).digest())
    names = [name for name, _ in listing]
    for name, data in zip(names, _read_images(root, names), strict=True):
        digest.update(name.encode() + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _load(path: str, data: bytes, cfg: DataPrepConfig) -> np.ndarray:
    """Center crop `crop`, resize to `size` (bilinear, antialiased), keep `n_bits`: HWC uint8."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise DataPrepError(f"{path}: unreadable image ({exc}); re-extract it") from None
    if image.mode != "RGB":
        raise DataPrepError(f"{path}: image mode {image.mode}, expected RGB (a CelebA JPEG)")
    width, height = image.size
    if width < cfg.crop or height < cfg.crop:
        raise DataPrepError(
            f"{path}: image is {width}x{height}, smaller than the {cfg.crop}x{cfg.crop} crop "
            "(aligned CelebA images are 178x218); lower data_prep.crop or fix the image"
        )
    left, top = (width - cfg.crop) // 2, (height - cfg.crop) // 2
    image = image.crop((left, top, left + cfg.crop, top + cfg.crop))
    image = image.resize((cfg.size, cfg.size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8) >> (8 - cfg.n_bits)
