"""The one PNG decoder: shard samples (the loader, deploy) and PNG files given to deploy."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# modes an 8-bit grey or colour image may come in; 16-bit ones ("I;16", "I") are refused below
MODES = ("L", "RGB", "RGBA", "LA", "P", "I;16", "I")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C), C in {1, 3}: grey gives C=1, a palette becomes RGB and an
    alpha channel is dropped. The inverse of `data_prep.shards.encode_image`.

    Anything else (not a PNG, a damaged one, 16-bit levels) raises ValueError with the reason.
    """
    try:
        opened = Image.open(io.BytesIO(data), formats=["PNG"])
    except UnidentifiedImageError:
        raise ValueError(f"not a PNG file (starts with {data[:8]!r})") from None
    with opened as pil:
        if pil.mode not in MODES:
            raise ValueError(f"unsupported PNG mode {pil.mode}")
        try:
            array = np.asarray(_without_palette_or_alpha(pil))
        except Exception as exc:  # PIL raises several types for damaged data
            raise ValueError(f"damaged PNG data ({exc})") from None
    if array.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit PNG, got {array.dtype}")
    return array[:, :, None] if array.ndim == 2 else array


def _without_palette_or_alpha(pil: Image.Image) -> Image.Image:
    if pil.mode in ("P", "RGBA"):
        return pil.convert("RGB")
    return pil.convert("L") if pil.mode == "LA" else pil
