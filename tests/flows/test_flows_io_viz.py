"""The model bundle (safetensors + JSON, no pickle) and the pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flows_helpers import ALL_CONFIGS, perturb_, tiny
from PIL import Image
from safetensors.torch import load_file

from flows import build_model, initialize_from_batch
from flows.io import load_config, load_meta, load_model, save_model
from flows.scoring import sample_levels
from flows.viz import GRID_PAD, level_grid, save_sample_grid


@pytest.mark.parametrize("key", ["glow-affine-lu", "realnvp-affine", "nice", "vae", "fvae"])
def test_save_load_round_trip_gives_identical_bpd(key, tmp_path):
    cfg = ALL_CONFIGS[key]
    model = build_model(cfg)
    x = torch.randint(0, cfg.n_bins, (4, *cfg.image_shape))
    initialize_from_batch(model, x)
    perturb_(model, 0.05)
    folder = save_model(model, tmp_path / "bundle", meta={"step": 7, "run_id": "abc"})
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json", "model.safetensors", "model_config.json"]
    assert load_config(folder) == cfg
    assert load_meta(folder)["step"] == 7 and load_meta(folder)["run_id"] == "abc"
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    json.loads((folder / "model_config.json").read_text())  # plain JSON, no pickle

    loaded = load_model(folder)
    assert not loaded.training
    for k in (1, 3):
        a = model.bits_per_dim(x, k=k, generator=torch.Generator().manual_seed(0))
        b = loaded.bits_per_dim(x, k=k, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(tmp_path)


def test_sample_grid_is_written(tmp_path):
    model = build_model(tiny("glow", (1, 8, 8), n_bins=17, levels=2, steps=1, hidden=8))
    path = save_sample_grid(model, tmp_path / "g" / "samples.png", n=6, temperature=0.7, nrow=3)
    assert path == tmp_path / "g" / "samples.png"
    with Image.open(path) as image:
        assert image.size == (3 * 8 + 4 * GRID_PAD, 2 * 8 + 3 * GRID_PAD)  # 3 x 2, padded
        pixels = np.asarray(image)
    levels = sample_levels(model, 6, 0.7, generator=0)  # the same CPU stream
    assert np.array_equal(pixels, level_grid(levels, 17, nrow=3)[:, :, 0])


def test_load_refuses_weights_that_do_not_match_the_config(tmp_path):
    cfg = tiny("glow", levels=1, steps=1, hidden=8)
    folder = save_model(build_model(cfg), tmp_path / "bundle")
    deeper = cfg.model_copy(update={"steps": 2})
    (folder / "model_config.json").write_text(deeper.model_dump_json())
    with pytest.raises(RuntimeError, match="Missing key"):
        load_model(folder)
