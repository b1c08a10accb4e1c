"""CelebA, aligned and cropped: center crop, resize, keep `n_bits` per channel.

Layout (official): `img_align_celeba/NNNNNN.jpg` (178x218 RGB) and `list_eval_partition.txt`
with lines `NNNNNN.jpg P`, P = 0 train, 1 val, 2 test. The crop-148-resize-64, 5-bit recipe
follows common practice for flows on CelebA (RealNVP, Glow).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.sources import Sample, Source

IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
SPLIT_OF = {0: "train", 1: "val", 2: "test"}
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def open_celeba(cfg: DataPrepConfig) -> Source:
    """Check the layout, read the partition file and fingerprint every listed image."""
    root = _check_layout(cfg.source)
    listing = _read_partition(root / PARTITION)
    wanted = {"train", "test", "val"} if cfg.val_fraction > 0 else {"train", "test"}
    names = {split: [n for n, s in listing if s == split] for split in ("train", "val", "test")
             if split in wanted}
    for split, files in names.items():
        if not files:
            raise DataPrepError(f"{root / PARTITION}: lists no {split} images")
    fingerprint = _fingerprint(root, listing, cfg)

    def read_split(split: str) -> Iterator[Sample]:
        for name in names[split]:
            image = _load(root / IMAGES / name, cfg)
            yield name.split(".")[0], image, None

    return Source(
        dataset="celeba",
        image_shape=(3, cfg.size, cfg.size),
        n_bins=2**cfg.n_bits,
        fingerprint=fingerprint,
        split_counts={split: len(files) for split, files in names.items()},
        read_split=read_split,
    )


def _check_layout(source: Path | None) -> Path:
    if source is None:
        raise DataPrepError(
            f"data_prep.source is not set for celeba: set it to the folder holding {IMAGES}/ "
            f"and {PARTITION} (the 'Align&Cropped Images' and 'Eval' files from {HOME})"
        )
    root = Path(source)
    if not root.is_dir():
        raise DataPrepError(
            f"{root}: CelebA folder not found; it must hold {IMAGES}/ and {PARTITION} "
            f"(from {HOME})"
        )
    if not (root / IMAGES).is_dir():
        raise DataPrepError(
            f"{root / IMAGES}: folder not found; extract img_align_celeba.zip (from {HOME}) "
            f"into {root}"
        )
    if not (root / PARTITION).is_file():
        raise DataPrepError(
            f"{root / PARTITION}: partition file not found; put Eval/{PARTITION} (from {HOME}) "
            f"at {root / PARTITION}"
        )
    return root


def _read_partition(path: Path) -> list[tuple[str, str]]:
    """(file name, split) per line, in file order."""
    listing = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in SPLIT_OF \
                or "/" in parts[0]:
            raise DataPrepError(
                f"{path}:{number}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}"
            )
        listing.append((parts[0], SPLIT_OF[int(parts[1])]))
    if not listing:
        raise DataPrepError(f"{path}: partition file is empty")
    return listing


def _fingerprint(root: Path, listing: list[tuple[str, str]], cfg: DataPrepConfig) -> str:
    """sha256 over the partition and the bytes of every listed image (content, not mtimes)."""
    digest = hashlib.sha256((root / PARTITION).read_bytes())
    for name, split in listing:
        if split == "val" and cfg.val_fraction == 0:
            continue
        path = root / IMAGES / name
        try:
            digest.update(name.encode() + hashlib.sha256(path.read_bytes()).digest())
        except FileNotFoundError:
            raise DataPrepError(
                f"{path}: image listed in {root / PARTITION} is missing; re-extract "
                f"img_align_celeba.zip or remove the line from the partition file"
            ) from None
    return digest.hexdigest()


def _load(path: Path, cfg: DataPrepConfig) -> np.ndarray:
    """Center crop `crop`, resize to `size` (bilinear, antialiased), keep `n_bits`: HWC uint8."""
    try:
        with Image.open(path) as image:
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
