"""Exact latent inference: images to latents and back, and interpolation between two images.

An exact flow's latent is one array per level of its multi-scale stack, named `level0`,
`level1`, … in `encode`'s order (the factored-out halves, then the last scale's output),
each [B, *shape] with the shapes of `latent_shapes`. A variational model (VAE, f-VAE) has
one array, `mean`: the posterior mean of its latent, [B, d].

Levels are encoded from the centre of their bins, y = (x + 0.5)/n_bins − 0.5 (a deterministic
dequantisation, `flows.bpd.bin_centres`), so for the flows `decode_levels(encode_levels(x))`
returns x exactly: `to_levels` floors (y + 0.5)·n_bins, and the centre is half a bin from
either edge, far beyond float error. Glow paper (Kingma & Dhariwal 2018), Fig. 5.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from flows import bpd
from flows.density import DensityModel

MEAN = "mean"  # the variational models' one latent


def latent_shapes(model: DensityModel) -> dict[str, tuple[int, ...]]:
    """{name: shape of one image's latent} in order: `level{i}` for flows, `mean` else."""
    if model.exact:
        return {f"level{i}": tuple(s) for i, s in enumerate(model.stack.latent_shapes)}
    with torch.no_grad():
        y = torch.zeros(1, *model.image_shape, dtype=model.dtype, device=model.device)
        return {MEAN: tuple(model.encode_mean(y).shape[1:])}


def _as_y(model: DensityModel, x, seed: int | None) -> torch.Tensor:
    """Levels [B, C, H, W] -> y on the model's device: the bin centres, or one uniform
    dequantisation drawn with `seed`."""
    x = torch.as_tensor(np.array(x)).to(model.device)  # a copy: inputs may be read-only
    if tuple(x.shape[1:]) != model.image_shape or x.dim() != 4:
        raise ValueError(f"Expected levels of shape [B, {', '.join(map(str, model.image_shape))}]"
                         f", got {list(x.shape)}.")
    if seed is None:
        return bpd.bin_centres(x, model.n_bins, model.dtype)
    return model.dequantize(x, generator=seed)


@torch.no_grad()
def encode_levels(model: DensityModel, x, seed: int | None = None) -> dict[str, np.ndarray]:
    """Integer levels x [B, C, H, W] -> {name: float32 latents [B, *shape]} (module doc).

    `seed` None encodes the bin centres (exact round trip for flows); an int encodes one
    uniform dequantisation drawn with it (still inside each bin)."""
    y = _as_y(model, x, seed)
    if model.exact:
        parts = model.stack.split_latent(model.encode(y)[0])
        named = {f"level{i}": p for i, p in enumerate(parts)}
    else:
        named = {MEAN: model.encode_mean(y)}
    return {name: z.float().cpu().numpy() for name, z in named.items()}


@torch.no_grad()
def decode_levels(model: DensityModel, latents: Mapping[str, np.ndarray]) -> np.ndarray:
    """{name: latents [B, *shape]} (as `encode_levels` gives) -> uint8 levels [B, C, H, W]."""
    expected = latent_shapes(model)
    if sorted(latents) != sorted(expected):
        raise ValueError(f"Expected latents named {list(expected)}, got {sorted(latents)}.")
    parts = [torch.as_tensor(np.array(latents[name])) for name in expected]  # copies, as above
    for (name, shape), part in zip(expected.items(), parts, strict=True):
        if tuple(part.shape[1:]) != shape or len(part) != len(parts[0]):
            raise ValueError(f"Expected {name!r} of shape [{len(parts[0])}, "
                             f"{', '.join(map(str, shape))}], got {list(part.shape)}.")
    parts = [p.to(device=model.device, dtype=model.dtype) for p in parts]
    z = model.stack.join_latent(parts) if model.exact else parts[0]
    return model.to_levels(model.decode(z)).cpu().numpy()


def interpolate(model: DensityModel, x_a, x_b, steps: int = 8) -> np.ndarray:
    """The Fig. 5 strip: uint8 levels [steps + 2, C, H, W] from x_a to x_b ([C, H, W] each).

    Every latent (each level's for flows, the posterior mean else) moves linearly,
    z_t = (1 − t)·z_a + t·z_b, t = 0, 1/(steps + 1), …, 1. For flows every frame is decoded,
    the ends included (they are x_a and x_b exactly); a variational model's ends are the
    input images themselves, its reconstructions being only approximate.
    """
    if steps < 0:
        raise ValueError(f"Expected steps >= 0 frames between the two images, got {steps}.")
    ends = np.stack([np.asarray(x_a), np.asarray(x_b)])
    z = encode_levels(model, ends)
    path = {name: line_between(pair[0], pair[1], steps) for name, pair in z.items()}
    frames = decode_levels(model, path)
    if not model.exact:
        frames[0], frames[-1] = ends[0], ends[1]
    return frames


def line_between(z_a: np.ndarray, z_b: np.ndarray, steps: int) -> np.ndarray:
    """[steps + 2, *shape]: z_t = (1 − t)·z_a + t·z_b at t = 0, 1/(steps + 1), …, 1 (one
    latent, or several flattened into one row: the map is elementwise)."""
    t = np.linspace(0.0, 1.0, steps + 2, dtype=np.float32).reshape(-1, *([1] * z_a.ndim))
    return (1 - t) * z_a + t * z_b


def save_latents(latents: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write named latents as `.safetensors` or `.npz` (chosen by the suffix)."""
    path = Path(path)
    arrays = {name: np.ascontiguousarray(z, dtype=np.float32) for name, z in latents.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise ValueError(f"{path}: latents are written as .safetensors or .npz")
    return path


def load_latents(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Named latents from a `.safetensors` or `.npz` file (as `save_latents` writes)."""
    from safetensors import SafetensorError

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
    except (OSError, ValueError, SafetensorError) as err:
        raise ValueError(f"{path}: not a readable latents file ({err})") from None
    raise ValueError(f"{path}: latents are read from .safetensors or .npz")
