"""Sample grids as MLflow images: one key per temperature, one step per evaluation."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

MIN_SIDE = 256  # px: smaller grids are enlarged, so the UI shows them at a readable size
_TEMPERATURE = re.compile(r"_T([0-9.]+)\.png$")


def upscaled(image, min_side: int = MIN_SIDE):
    """A PIL image enlarged by the smallest integer factor that makes its shorter side at
    least `min_side`, with nearest-neighbour resampling (pixels stay sharp squares)."""
    from PIL import Image

    factor = math.ceil(min_side / min(image.size))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def image_key(path: Path, prefix: str = "samples") -> str:
    """`samples_epoch005_T0.7.png` -> `samples/T0.7` (the step holds the epoch)."""
    found = _TEMPERATURE.search(path.name)
    return f"{prefix}/T{found.group(1)}" if found else f"{prefix}/{path.stem}"


def log_images(client, run_id: str, paths: Iterable[Path], step: int) -> None:
    """Log each PNG as an MLflow image at `step` (the UI's step slider), enlarged if small."""
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            client.log_image(run_id, upscaled(image.convert("RGB")), key=image_key(path),
                             step=step)
