"""Attribute directions in latent space and moving an image along them (Glow paper, Fig. 6).

A direction of attribute a is, for every latent (each level of a flow's multi-scale stack,
or a variational model's posterior mean; `flows.latents`), the mean latent of the images
that have a minus the mean latent of those that don't:

    d_a = E[z | a] − E[z | not a],

with z encoded from each image's bin centres. Moving an image by α·d_a and decoding gives
the figure's row; α = 0 is the image itself.

Directions are stored as one safetensors file, tensor `"{attribute}/{latent}"` of shape
[*latent shape], the attribute names in order in the file's metadata (`attributes`), and
the images counted with and without each attribute (`counts`).

Reference: Kingma & Dhariwal, Glow (2018), section 5 and Fig. 6, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flows.density import DensityModel
from flows.io import atomic_write
from flows.latents import decode_levels, encode_levels, latent_shapes

#: The directions' file inside a model bundle (beside model.safetensors).
DIRECTIONS_FILE = "attributes.safetensors"


@dataclass
class Directions:
    """Attribute name -> {latent name: direction [*shape] float32}, with the images counted
    {attribute: (with, without)} when the directions were computed."""

    vectors: dict[str, dict[str, np.ndarray]]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    def get(self, attribute: str) -> dict[str, np.ndarray]:
        """The direction of `attribute`; an unknown name is an error listing the known ones."""
        if attribute not in self.vectors:
            known = ", ".join(self.vectors) or "none"
            raise KeyError(f"unknown attribute {attribute!r}; this model has directions for: "
                           f"{known}")
        return self.vectors[attribute]


class DirectionSums:
    """Running sums of latents with and without each attribute, batch by batch."""

    def __init__(self, model: DensityModel, attributes: Sequence[str]):
        self.model = model
        self.attributes = list(attributes)
        self.shapes = latent_shapes(model)
        n = len(self.attributes)
        self.with_sum = {k: np.zeros((n, *s), np.float64) for k, s in self.shapes.items()}
        self.total = {k: np.zeros(s, np.float64) for k, s in self.shapes.items()}
        self.with_count = np.zeros(n, np.int64)
        self.count = 0

    def add(self, levels: np.ndarray, has: np.ndarray) -> None:
        """Images `levels` [B, C, H, W] and `has` [B, attributes] (true/1 where present)."""
        has = np.asarray(has) > 0
        if has.shape != (len(levels), len(self.attributes)):
            raise ValueError(f"Expected attribute flags of shape [{len(levels)}, "
                             f"{len(self.attributes)}], got {list(has.shape)}.")
        z = encode_levels(self.model, levels)
        weights = has.astype(np.float64)
        for name, part in z.items():
            flat = part.reshape(len(part), -1).astype(np.float64)
            self.with_sum[name] += (weights.T @ flat).reshape(self.with_sum[name].shape)
            self.total[name] += part.astype(np.float64).sum(0)
        self.with_count += has.sum(0)
        self.count += len(levels)

    def directions(self) -> Directions:
        """Mean with minus mean without, for every attribute seen both ways (others left
        out: their difference is undefined)."""
        vectors, counts = {}, {}
        for i, attribute in enumerate(self.attributes):
            n_with = int(self.with_count[i])
            n_without = self.count - n_with
            if n_with == 0 or n_without == 0:
                continue
            vectors[attribute] = {
                name: (self.with_sum[name][i] / n_with
                       - (self.total[name] - self.with_sum[name][i]) / n_without
                       ).astype(np.float32)
                for name in self.shapes
            }
            counts[attribute] = (n_with, n_without)
        return Directions(vectors, counts)


def compute_directions(model: DensityModel, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                       attributes: Sequence[str]) -> Directions:
    """Directions of `attributes` from (levels [B, C, H, W], flags [B, attributes]) batches."""
    sums = DirectionSums(model, attributes)
    for levels, has in batches:
        sums.add(np.asarray(levels), np.asarray(has))
    return sums.directions()


def manipulate(model: DensityModel, x, direction: Mapping[str, np.ndarray],
               alphas: Sequence[float]) -> np.ndarray:
    """The Fig. 6 row: uint8 levels [len(alphas), C, H, W], image x [C, H, W] decoded from
    z(x) + α·d for each α. For flows α = 0 decodes to x exactly; a variational model's α = 0
    frame is x itself (its reconstruction being only approximate), as in `interpolate`."""
    x = np.asarray(x)
    z = encode_levels(model, x[None])
    if sorted(direction) != sorted(z):
        raise ValueError(f"Expected a direction with latents {sorted(z)}, got {sorted(direction)}.")
    a = np.asarray(list(alphas), np.float32)
    frames = decode_levels(model, {name: moved_along(part[0], direction[name], a)
                                   for name, part in z.items()})
    if not model.exact:
        frames[a == 0] = x
    return frames


def moved_along(z: np.ndarray, direction: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """[len(alphas), *shape]: one image's latent z [*shape] moved by α·d for each α (one
    latent, or several flattened into one row: the map is elementwise)."""
    d = np.asarray(direction, np.float32)
    return z[None] + np.asarray(alphas, np.float32).reshape(-1, *([1] * d.ndim)) * d[None]


def save_directions(directions: Directions, path: str | os.PathLike) -> Path:
    """Write `directions` as one safetensors file (module doc)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {f"{attribute}/{name}": np.ascontiguousarray(vector, np.float32)
               for attribute, latents in directions.vectors.items()
               for name, vector in latents.items()}
    metadata = {"attributes": json.dumps(directions.names),
                "counts": json.dumps({k: list(v) for k, v in directions.counts.items()})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def load_directions(path: str | os.PathLike) -> Directions:
    """Directions from a file `save_directions` wrote; a damaged file is a ValueError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = json.loads(metadata.get("attributes", "[]"))
            counts = json.loads(metadata.get("counts", "{}"))
            vectors: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
            for key in handle.keys():
                attribute, _, latent = key.rpartition("/")
                if attribute not in vectors:
                    raise ValueError(f"tensor {key!r} names no listed attribute")
                vectors[attribute][latent] = handle.get_tensor(key)
    except (OSError, SafetensorError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable attribute directions file ({err})") from None
    return Directions(vectors, {k: (int(v[0]), int(v[1])) for k, v in counts.items()})
