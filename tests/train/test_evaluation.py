"""The one evaluation path (`train.evaluation`): the whole split, CPU noise streams, grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import Manifest, make_loader
from data_prep.manifest import SplitInfo
from flows import ModelConfig, build_model, initialize_from_batch
from flows.scoring import sample_levels
from train.ddp import WorkerInfo
from train.evaluation import eval_noise, evaluate, save_samples
from train.seeding import derive_seed

ONE_PROCESS = WorkerInfo()


@pytest.fixture(scope="module")
def manifest(digits_manifest) -> Manifest:
    return Manifest.load(digits_manifest)


def _model(manifest: Manifest, **kw) -> torch.nn.Module:
    cfg = ModelConfig(name="glow", image_shape=manifest.image_shape, n_bins=manifest.n_bins,
                      levels=1, steps=1, hidden=8, **kw)
    torch.manual_seed(0)
    model = build_model(cfg)
    x, _ = next(iter(make_loader(manifest, "train", 64, mode="eval")))
    initialize_from_batch(model, x, generator=0)
    return model


@pytest.fixture(scope="module")
def glow(manifest):
    return _model(manifest)


def test_the_noise_is_the_cpu_stream_of_the_seed_split_k_and_rank(manifest, glow):
    """Drawn by hand on the CPU from `derive_seed(seed, "eval", split, k, rank)`, batch after
    batch: the same number. (A stream made on the model's device would differ on a GPU.)"""
    scored = evaluate(glow, manifest, ONE_PROCESS, batch_size=100, seed=5)
    stream = torch.Generator().manual_seed(derive_seed(5, "eval", "test", 1, 0))
    by_hand = []
    with torch.no_grad():
        for x, _ in make_loader(manifest, "test", 100, mode="eval"):
            u = torch.rand(x.shape, generator=stream)
            by_hand.append(glow.bits_per_dim(x, noise=u).double())
    by_hand = torch.cat(by_hand)
    assert scored.images == len(by_hand) == manifest.split("test").count
    assert scored.bpd == pytest.approx(float(by_hand.mean()), rel=1e-12)
    assert eval_noise(5, "test", 1, 0).initial_seed() == derive_seed(5, "eval", "test", 1, 0)


def test_the_seed_fixes_the_number_and_batching_does_not_matter_much(manifest, glow):
    first = evaluate(glow, manifest, ONE_PROCESS, batch_size=100, seed=5)
    assert evaluate(glow, manifest, ONE_PROCESS, batch_size=100, seed=5) == first
    other_seed = evaluate(glow, manifest, ONE_PROCESS, batch_size=100, seed=6)
    assert other_seed.bpd != first.bpd
    assert other_seed.bpd == pytest.approx(first.bpd, abs=0.02)  # another draw, same bound


def test_variational_dequantisation_and_k_draws_come_from_the_cpu_stream(manifest):
    model = _model(manifest, dequantization="variational", dequant_hidden=8, dequant_steps=1)
    scored = evaluate(model, manifest, ONE_PROCESS, batch_size=200, seed=1, k=3)
    stream = eval_noise(1, "test", 3, 0)
    with torch.no_grad():
        by_hand = torch.cat([model.bits_per_dim(x, k=3, generator=stream).double()
                             for x, _ in make_loader(manifest, "test", 200, mode="eval")])
    assert scored.bpd == pytest.approx(float(by_hand.mean()), rel=1e-12)


def test_training_mode_is_restored(manifest, glow):
    glow.train()
    evaluate(glow, manifest, ONE_PROCESS, batch_size=200, seed=0)
    assert glow.training
    glow.eval()


def test_an_empty_split_is_a_clear_error(manifest, glow):
    empty = manifest.model_copy(
        update={"splits": {**manifest.splits, "val": SplitInfo(count=0, shards=[])}})
    with pytest.raises(ValueError, match="split 'val' of .* is empty; nothing to evaluate"):
        evaluate(glow, empty, ONE_PROCESS, batch_size=100, seed=0, split="val")


def test_a_non_finite_mean_is_a_clear_error(manifest):
    broken = _model(manifest)
    with torch.no_grad():
        next(broken.parameters()).fill_(math.nan)
    with pytest.raises(ValueError, match="test bits/dim is nan: the model gives non-finite"):
        evaluate(broken, manifest, ONE_PROCESS, batch_size=200, seed=0)


def test_sample_grids_are_seeded_per_temperature_on_the_cpu(manifest, glow, tmp_path):
    paths = save_samples(glow, tmp_path, temperatures=(1.0, 0.5), n=4, seed=3,
                         prefix="samples_epoch002")
    assert [p.name for p in paths] == ["samples_epoch002_T1.png", "samples_epoch002_T0.5.png"]
    levels = sample_levels(glow, 4, 0.5, generator=torch.Generator().manual_seed(
        derive_seed(3, "samples", 0.5)))
    pixels = np.asarray(Image.open(paths[1]))
    stretched = np.round(levels[:, 0] * 255.0 / (manifest.n_bins - 1)).astype(np.uint8)
    assert np.array_equal(pixels[2:10, 2:10], stretched[0])  # the first image, after the pad
    assert save_samples(glow, tmp_path, temperatures=(1.0,), n=0, seed=3) == []
