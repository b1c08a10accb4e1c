"""The served model's latent request modes: encode, decode, interpolate (Glow paper, Fig. 5)
and manipulate (Fig. 6), computed in units of work like scoring.

Latents travel flat, one row of D numbers per image: the model's latents
(`flows.latents.latent_shapes`: `level0`, `level1`, … for a flow, D = C·H·W in all; `mean`, the
posterior mean, for VAE / f-VAE) each flattened in C order and concatenated in that order, which
for a flow is exactly the z of `FlowModel.encode`. An encode request returns this form and a
decode request takes it, so one's answer is the other's input; `/health` of `nfpipe deploy
serve` gives the shapes to split a row by.

Work: every image encoded and every frame decoded is one image evaluation, counted against the
model's `max_work`; frames out (interpolate's steps + 2, manipulate's alphas) are bounded by its
`max_samples`. Encoding and decoding run in units of `SLICE_IMAGES` images, each under the
scorer's lock, so a server interleaves them with other requests' units.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.request_checks import (
    SLICE_IMAGES,
    check_alphas,
    check_attribute,
    check_evaluations,
    check_image_count,
    check_images,
    check_latents,
    check_steps,
)
from flows.attributes import moved_along
from flows.latents import decode_levels, encode_levels, line_between

if TYPE_CHECKING:
    from deploy.pyfunc import FlowScorer
    from flows.attributes import Directions

LATENT_MODES = ("encode", "decode", "interpolate", "manipulate")
DEFAULT_STEPS = 8  # interpolate: frames between the two images
DEFAULT_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # manipulate: the moves along the direction

Steps = Generator[None, None, np.ndarray]


def flatten(latents: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
            ) -> np.ndarray:
    """{name: [B, *shape]} -> float32 [B, D], in the order of `shapes` (the module's form)."""
    rows = len(next(iter(latents.values())))
    return np.concatenate([np.asarray(latents[name], np.float32).reshape(rows, -1)
                           for name in shapes], axis=1)


def unflatten(z: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """float32 [B, D] -> {name: [B, *shape]}: the inverse of `flatten`."""
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    parts = np.split(z, np.cumsum(sizes)[:-1], axis=1)
    return {name: part.reshape(len(z), *shape)
            for (name, shape), part in zip(shapes.items(), parts, strict=True)}


def check_directions(directions: Directions, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every attribute's direction has the model's latents, shape for shape (ValueError if
    not: the directions were computed for another model)."""
    expected = {name: tuple(shape) for name, shape in shapes.items()}
    for attribute, vectors in directions.vectors.items():
        found = {name: tuple(np.shape(v)) for name, v in vectors.items()}
        if found != expected:
            raise ValueError(f"attribute direction {attribute!r} has latents {found}, but this "
                             f"model's are {expected}: the directions belong to another model")


def plan_latent(scorer: FlowScorer, mode: str, model_input: Any,
                params: Mapping[str, Any]) -> Steps:
    """Validate a latent-mode request now (raising `BadRequest`); the generator of its units."""
    plans: dict[str, Callable[[FlowScorer, Any, Mapping[str, Any]], Steps]] = {
        "encode": _plan_encode, "decode": _plan_decode,
        "interpolate": _plan_interpolate, "manipulate": _plan_manipulate}
    return plans[mode](scorer, model_input, params)


def _plan_encode(scorer: FlowScorer, model_input: Any, params: Mapping[str, Any]) -> Steps:
    x = _images(scorer, model_input)
    check_evaluations(len(x), f"encoding {len(x)} images", scorer.limits.max_work)
    return _encode_units(scorer, x)


def _plan_decode(scorer: FlowScorer, model_input: Any, params: Mapping[str, Any]) -> Steps:
    shapes = scorer.latent_shapes
    size = sum(int(np.prod(shape)) for shape in shapes.values())
    z = check_latents(model_input, size, scorer.limits.max_batch)
    check_evaluations(len(z), f"decoding {len(z)} latents", scorer.limits.max_work)
    return _decode_units(scorer, z)


def _plan_interpolate(scorer: FlowScorer, model_input: Any, params: Mapping[str, Any]
                      ) -> Steps:
    ends = check_image_count(_images(scorer, model_input), 2, "interpolate",
                             "the two ends, A then B")
    steps = check_steps(params.get("steps", DEFAULT_STEPS), scorer.limits.max_samples)
    check_evaluations(2 + steps + 2, f"encoding 2 images and decoding {steps + 2} frames",
                      scorer.limits.max_work)
    return _interpolate_units(scorer, ends, steps)


def _plan_manipulate(scorer: FlowScorer, model_input: Any, params: Mapping[str, Any]
                     ) -> Steps:
    x = check_image_count(_images(scorer, model_input), 1, "manipulate", "the image to move")
    directions = scorer.directions
    attribute = check_attribute(params.get("attribute"),
                                None if directions is None else directions.names)
    alphas = check_alphas(params.get("alphas", DEFAULT_ALPHAS), scorer.limits.max_samples)
    check_evaluations(1 + len(alphas), f"encoding 1 image and decoding {len(alphas)} frames",
                      scorer.limits.max_work)
    direction = flatten({name: v[None] for name, v in directions.get(attribute).items()},
                        scorer.latent_shapes)[0]
    return _manipulate_units(scorer, x, direction, alphas)


def _images(scorer: FlowScorer, model_input: Any) -> np.ndarray:
    return check_images(model_input, scorer.image_shape, scorer.n_bins,
                        scorer.limits.max_batch)


def _in_units(scorer: FlowScorer, rows: np.ndarray,
              compute: Callable[[np.ndarray], np.ndarray]) -> Steps:
    """`compute` over slices of SLICE_IMAGES rows, one unit each under the scorer's lock."""
    parts = []
    for start in range(0, len(rows), SLICE_IMAGES):
        with scorer.lock:
            parts.append(compute(rows[start:start + SLICE_IMAGES]))
        yield
    return np.concatenate(parts)


def _encode_units(scorer: FlowScorer, x: np.ndarray) -> Steps:
    """Levels [B, C, H, W] -> flat float32 latents [B, D], from the bins' centres."""
    shapes = scorer.latent_shapes
    return _in_units(scorer, x, lambda part: flatten(encode_levels(scorer.model, part), shapes))


def _decode_units(scorer: FlowScorer, z: np.ndarray) -> Steps:
    """Flat latents [B, D] -> uint8 levels [B, C, H, W]."""
    shapes = scorer.latent_shapes
    return _in_units(scorer, z, lambda part: decode_levels(scorer.model, unflatten(part, shapes)))


def _interpolate_units(scorer: FlowScorer, ends: np.ndarray, steps: int) -> Steps:
    """`flows.latents.interpolate` in units: z_t = (1 − t)·z_a + t·z_b, t from 0 to 1."""
    z = yield from _encode_units(scorer, ends)
    frames = yield from _decode_units(scorer, line_between(z[0], z[1], steps))
    if not scorer.model.exact:  # the ends are the images, a VAE's reconstruction is not
        frames[0], frames[-1] = ends
    return frames


def _manipulate_units(scorer: FlowScorer, x: np.ndarray, direction: np.ndarray,
                      alphas: np.ndarray) -> Steps:
    """`flows.attributes.manipulate` in units: x decoded from z(x) + α·d for each α."""
    z = yield from _encode_units(scorer, x)
    frames = yield from _decode_units(scorer, moved_along(z[0], direction, alphas))
    if not scorer.model.exact:  # α = 0 is the image itself, as in `interpolate`
        frames[alphas == 0] = x[0]
    return frames
