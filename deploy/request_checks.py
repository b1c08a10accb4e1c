"""Checks of one request to the served model: what came, against what the model takes.

Every check raises `BadRequest` with a message that says what was expected and what came;
MLflow's scoring server answers it with 400 (as `MlflowException` INVALID_PARAMETER_VALUE,
`deploy.pyfunc.FlowPyfunc.predict`), `nfpipe deploy serve` directly. The forms themselves are
in `deploy/pyfunc.py`'s module docstring.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SLICE_IMAGES = 64  # image evaluations per unit of work: the grain of interleaving
MAX_ALPHA = 100.0  # |alpha| of a manipulate request: far past any useful move, short of overflow


class BadRequest(ValueError):
    """A request the model cannot serve; the message says what was expected."""


def check_images(x: Any, image_shape: tuple[int, int, int], n_bins: int, max_batch: int) -> Any:
    """Validate a batch of levels and return it as a uint8 ndarray [B, C, H, W]."""
    if isinstance(x, dict) and len(x) == 1:  # a single named tensor
        x = next(iter(x.values()))
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pandas
        raise BadRequest("Expected a uint8 array [B, C, H, W] of levels, got a DataFrame.")
    array = x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else x
    array = np.asarray(array)
    if array.dtype == object:
        raise BadRequest("Expected a rectangular array of integer levels (ragged or mixed input).")
    if array.dtype.kind not in "ui":
        raise BadRequest(
            f"Expected integer levels (uint8) in [0, {n_bins}), got dtype {array.dtype}."
        )
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise BadRequest(f"Expected shape [B, {', '.join(map(str, image_shape))}] "
                         f"(B, C, H, W), got {list(array.shape)}.")
    if not 1 <= array.shape[0] <= max_batch:
        raise BadRequest(f"Expected 1 to {max_batch} images per request, got {array.shape[0]}.")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= n_bins:
        raise BadRequest(
            f"Levels must lie in [0, {n_bins}) for this model (n_bins={n_bins}); got values "
            f"in [{low}, {high}]. Send the dataset's levels, not 8-bit pixel values."
        )
    return array.astype(np.uint8, copy=False)


def check_sample_request(n: Any, temperature: Any, max_samples: int) -> tuple[int, float]:
    if not is_number(n, integer=True):
        raise BadRequest(f"'n' must be an integer number of samples, got {shown(n)}.")
    if not 1 <= int(n) <= max_samples:
        raise BadRequest(f"'n' must be between 1 and {max_samples} samples, got {shown(n)}.")
    if not is_number(temperature):
        raise BadRequest(f"'temperature' must be a number, got {shown(temperature)}.")
    try:
        t = float(temperature)
    except OverflowError:  # an integer too large for a float
        t = float("inf")
    if not 0.0 < t <= 10.0 or not np.isfinite(t):
        raise BadRequest(f"'temperature' must be in (0, 10], got {shown(temperature)}.")
    return int(n), t


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if not is_number(value, integer=True):
        raise BadRequest(f"'{name}' must be an integer, got {shown(value)}.")
    if not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {shown(value)}.")
    return int(value)


def is_number(value: Any, integer: bool = False) -> bool:
    """One rule for every numeric param: a JSON number, never a bool (`true` is not 1) nor a
    string; `integer` also refuses fractions."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def shown(value: Any, limit: int = 40) -> str:
    """`value` for an error message, cut short (a param may be a 4,000-digit integer)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {round(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_work(images: int, k: int, max_work: int) -> None:
    """The per-request budget: images x k forward passes at most."""
    if images * k > max_work:
        raise BadRequest(f"{images} images x k={k} = {images * k} image evaluations is over "
                         f"this model's budget of {max_work} per request; send fewer images "
                         "per request or a smaller k.")


def check_evaluations(count: int, what: str, max_work: int) -> None:
    """The per-request budget for the latent modes: `count` image evaluations (each image
    encoded or decoded is one) at most `max_work`."""
    if count > max_work:
        raise BadRequest(f"{what} = {count} image evaluations is over this model's budget of "
                         f"{max_work} per request; send fewer images (or frames) per request.")


def check_image_count(x: np.ndarray, count: int, mode: str, meaning: str) -> np.ndarray:
    """`x` (already `check_images`d) holds exactly `count` images."""
    if len(x) != count:
        raise BadRequest(f"'{mode}' takes exactly {count} image{'s' if count > 1 else ''} "
                         f"[{count}, C, H, W] ({meaning}), got {len(x)}.")
    return x


def check_latents(z: Any, size: int, max_batch: int) -> np.ndarray:
    """Validate flat latents and return them as float32 [B, size]: finite numbers, one row of
    `size` values per image (the form an encode request returns)."""
    if isinstance(z, dict) and len(z) == 1:  # a single named tensor
        z = next(iter(z.values()))
    if hasattr(z, "to_numpy") and not isinstance(z, np.ndarray):  # pandas
        raise BadRequest(f"Expected latents [B, {size}] as an array, got a DataFrame.")
    array = np.asarray(z.numpy() if hasattr(z, "numpy") and not isinstance(z, np.ndarray) else z)
    if array.dtype == object:
        raise BadRequest("Expected a rectangular array of numbers (ragged or mixed input).")
    if array.dtype.kind not in "uif":
        raise BadRequest(f"Expected latents as numbers, got dtype {array.dtype}.")
    if array.ndim != 2 or array.shape[1] != size:
        raise BadRequest(f"Expected latents of shape [B, {size}] (one row of {size} values per "
                         f"image, as an encode request returns them), got {list(array.shape)}.")
    if not 1 <= len(array) <= max_batch:
        raise BadRequest(f"Expected 1 to {max_batch} latents per request, got {len(array)}.")
    with np.errstate(over="ignore"):
        latents = array.astype(np.float32)
    if not np.isfinite(latents).all():
        raise BadRequest("Latents must be finite numbers within float32's range (no NaN, no "
                         "infinity).")
    return latents


def check_steps(steps: Any, max_frames: int) -> int:
    """Frames between the two ends of an interpolation: steps + 2 frames <= `max_frames`."""
    high = max(0, max_frames - 2)
    if not is_number(steps, integer=True) or not 0 <= int(steps) <= high:
        raise BadRequest(f"'steps' must be an integer between 0 and {high} (steps + 2 frames, "
                         f"at most this model's max_samples={max_frames}), got {shown(steps)}.")
    return int(steps)


def check_alphas(alphas: Any, max_frames: int) -> np.ndarray:
    """The alphas of a manipulate request: 1 to `max_frames` finite numbers, |alpha| <=
    MAX_ALPHA, as a float32 array."""
    example = "such as [-1, -0.5, 0, 0.5, 1]"
    if isinstance(alphas, np.ndarray) and alphas.ndim == 1:
        alphas = alphas.tolist()
    if not isinstance(alphas, (list, tuple)):
        raise BadRequest(f"'alphas' must be a list of numbers {example}, got {shown(alphas)}.")
    if not 1 <= len(alphas) <= max_frames:
        raise BadRequest(f"'alphas' must hold 1 to {max_frames} numbers (this model's "
                         f"max_samples), got {len(alphas)}.")
    if not all(is_number(a) for a in alphas):
        raise BadRequest(f"'alphas' must be a list of numbers {example}, got {shown(alphas)}.")
    if not all(math.isfinite(a) and abs(a) <= MAX_ALPHA for a in map(_float, alphas)):
        raise BadRequest(f"'alphas' must lie in [-{MAX_ALPHA:g}, {MAX_ALPHA:g}], got "
                         f"{shown(alphas)}.")
    return np.asarray([float(a) for a in alphas], np.float32)


def _float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf


def check_attribute(attribute: Any, known: list[str] | None) -> str:
    """A manipulate request's attribute: a name among `known` (None: the model has none)."""
    if known is None:
        raise BadRequest("This model has no attribute directions (its bundle holds no "
                         "attributes.safetensors), so it cannot serve 'manipulate'.")
    listed = ", ".join(known) or "none"
    if not isinstance(attribute, str) or not attribute:
        raise BadRequest(f"'manipulate' needs 'attribute', the name of one of this model's "
                         f"directions: {listed}; got {shown(attribute)}.")
    if attribute not in known:
        raise BadRequest(f"Unknown attribute {shown(attribute)}; this model has directions "
                         f"for: {listed}.")
    return attribute
