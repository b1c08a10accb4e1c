"""Exact latent inference (`flows.latents`): per-level latents, the round trip, interpolation,
the latents file. Real digits images and registered models: tests/deploy/test_deploy_latents.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flows_helpers import ALL_CONFIGS, EXACT_CONFIGS, VARIATIONAL_CONFIGS, perturb_

from flows import build_model, initialize_from_batch
from flows.latents import (
    decode_levels,
    encode_levels,
    interpolate,
    latent_shapes,
    load_latents,
    save_latents,
)


def _model_and_levels(key: str, n: int = 4, perturb: bool = True):
    cfg = ALL_CONFIGS[key]
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.n_bins, (n, *cfg.image_shape), dtype=torch.uint8)
    initialize_from_batch(model, x)
    if perturb:  # couplings off their identity init, so the round trip is not trivial
        with torch.no_grad():
            perturb_(model, 0.05)
    return model.eval(), x.numpy()


@pytest.mark.parametrize("key", sorted(EXACT_CONFIGS))
def test_flow_latents_are_one_array_per_level_and_decode_to_the_levels(key):
    model, x = _model_and_levels(key)
    shapes = latent_shapes(model)
    assert list(shapes) == [f"level{i}" for i in range(len(model.stack.latent_shapes))]
    assert sum(math.prod(s) for s in shapes.values()) == model.n_dims
    z = encode_levels(model, x)
    assert {k: v.shape[1:] for k, v in z.items()} == shapes
    assert all(v.dtype == np.float32 and len(v) == len(x) for v in z.values())
    flat = torch.cat([torch.from_numpy(v).reshape(len(x), -1) for v in z.values()], 1)
    y = (torch.from_numpy(x).double() + 0.5) / model.n_bins - 0.5
    torch.testing.assert_close(flat, model.encode(y.to(model.dtype))[0].float())  # encode's order
    back = decode_levels(model, z)
    assert back.dtype == np.uint8 and np.array_equal(back, x)
    # a seeded uniform dequantisation stays inside each bin: the same levels come back
    assert np.array_equal(decode_levels(model, encode_levels(model, x, seed=3)), x)


@pytest.mark.parametrize("key", sorted(VARIATIONAL_CONFIGS))
def test_variational_latent_is_the_posterior_mean(key):
    model, x = _model_and_levels(key)
    z = encode_levels(model, x)
    assert list(z) == ["mean"] and z["mean"].shape[1:] == latent_shapes(model)["mean"]
    y = torch.from_numpy(x).float().add(0.5).div(model.n_bins).sub(0.5)
    torch.testing.assert_close(torch.from_numpy(z["mean"]), model.encode_mean(y).detach())
    back = decode_levels(model, z)
    assert back.shape == x.shape and back.dtype == np.uint8 and back.max() < model.n_bins


@pytest.mark.parametrize("key", ["glow-affine-lu", "nice", "vae", "fvae"])
def test_interpolation_shapes_and_endpoints(key):
    """(was tests/flows/test_flows_io_viz.py, for `flows.viz.interpolate`)"""
    model, x = _model_and_levels(key, n=2, perturb=False)
    path = interpolate(model, x[0], x[1], steps=3)
    assert path.shape == (5, *model.image_shape) and path.dtype == np.uint8
    assert np.array_equal(path[0], x[0]) and np.array_equal(path[-1], x[1])
    with pytest.raises(ValueError, match="steps >= 0"):
        interpolate(model, x[0], x[1], steps=-1)


def test_flow_ends_are_decoded_not_copied():
    """For a flow the strip's ends come from decoding z_a and z_b (t = 0 and 1)."""
    model, x = _model_and_levels("realnvp-affine", n=2)
    path = interpolate(model, x[0], x[1], steps=2)
    z = encode_levels(model, x)
    assert np.array_equal(path[[0, -1]], decode_levels(model, z))
    middle = {k: (v[:1] * 2 + v[1:]) / 3 for k, v in z.items()}  # t = 1/3
    assert np.array_equal(path[1:2], decode_levels(model, middle))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_latents_file_round_trip(suffix, tmp_path):
    model, x = _model_and_levels("glow-affine-lu")
    z = encode_levels(model, x)
    path = save_latents(z, tmp_path / f"z{suffix}")
    loaded = load_latents(path)
    assert sorted(loaded) == sorted(z)
    assert all(np.array_equal(loaded[k], z[k]) for k in z)
    assert np.array_equal(decode_levels(model, loaded), x)


def test_bad_latents_and_files_are_named(tmp_path):
    model, x = _model_and_levels("glow-affine-lu")
    z = encode_levels(model, x)
    with pytest.raises(ValueError, match=r"named \['level0', 'level1'\], got \['level0'\]"):
        decode_levels(model, {"level0": z["level0"]})
    with pytest.raises(ValueError, match=r"Expected 'level1' of shape \[4, "):
        decode_levels(model, {**z, "level1": z["level1"][:, :1]})
    with pytest.raises(ValueError, match=r"Expected levels of shape \[B, 2, 4, 4\]"):
        encode_levels(model, x[:, :1])
    with pytest.raises(ValueError, match="as .safetensors or .npz"):
        save_latents(z, tmp_path / "z.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable latents file"):
        load_latents(tmp_path / "bad.safetensors")
