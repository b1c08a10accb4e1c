"""A recipe in global terms: the global batch split over workers, and the LR warm-up and
weight EMA given in images, so they survive a change of worker count or batch size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from train_helpers import tiny_train

from pipeline.config import load_config
from train.config import OptimConfig, TrainConfig, per_worker_batch
from train.ddp import WorkerInfo
from train.optim import build_scheduler
from train.state import build_state

REPO = Path(__file__).resolve().parents[2]


def lrs(optim: OptimConfig, global_batch: int, steps: int) -> list[float]:
    """The learning rate of optimiser steps 1..steps (peak lr 1)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, optim, global_batch)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def lr_at_images(optim: OptimConfig, global_batch: int, images: int) -> dict[int, float]:
    """{images seen after the step: that step's lr} up to `images`."""
    rates = lrs(optim, global_batch, images // global_batch)
    return {(i + 1) * global_batch: lr for i, lr in enumerate(rates)}


def test_per_worker_batch_divides_the_global_batch_or_names_both_numbers():
    assert per_worker_batch(512, 8) == 64 and per_worker_batch(512, 1) == 512
    with pytest.raises(ValueError) as err:
        per_worker_batch(100, 3)
    assert str(err.value) == (
        "batch_size=100 is the global batch, split over scaling.num_workers=3 workers: "
        "100 / 3 = 33.33 images per worker is not whole; set batch_size to a multiple of 3 "
        "(e.g. 99 or 102) or change scaling.num_workers")
    with pytest.raises(ValueError, match=r"e\.g\. 4\)"):  # no multiple below: only the one above
        per_worker_batch(2, 4)


@pytest.mark.parametrize("name", ["batch_size", "eval_batch_size"])
def test_a_global_batch_the_workers_do_not_divide_is_a_config_error(name):
    with pytest.raises(ValidationError, match=rf"{name}=100 is the global batch, split over "
                       r"scaling.num_workers=8 workers: 100 / 8 = 12.5 images per worker"):
        TrainConfig.model_validate(tiny_train(**{name: 100}, scaling={"num_workers": 8}))


def test_the_same_global_batch_on_any_worker_count_has_the_same_schedule():
    """The LR is a function of the images seen: 1 or 2 workers at one global batch, alike."""
    runs = [TrainConfig.model_validate(tiny_train(
        batch_size=64, scaling={"num_workers": workers}, optim={"warmup_images": 640}))
        for workers in (1, 2)]
    assert [per_worker_batch(c.batch_size, c.scaling.num_workers) for c in runs] == [64, 32]
    one, two = (lrs(c.optim, c.batch_size, 12) for c in runs)
    assert one == two == pytest.approx([min(1.0, s / 10) for s in range(1, 13)])


def test_warm_up_in_images_ends_at_the_same_image_count_at_batch_64_and_512():
    optim = OptimConfig(warmup_images=512_000)
    small, large = lr_at_images(optim, 64, 600_000), lr_at_images(optim, 512, 600_000)
    shared = sorted(set(small) & set(large))  # every multiple of 512 images
    assert len(shared) == 600_000 // 512
    assert [small[n] for n in shared] == pytest.approx([large[n] for n in shared], rel=1e-12)
    assert [large[n] for n in shared] == pytest.approx([min(1.0, n / 512_000) for n in shared])
    for rates in (small, large):
        assert min(n for n, lr in rates.items() if lr == 1.0) == 512_000
    # a warm-up the batch does not divide ends within one batch of it
    optim = OptimConfig(warmup_images=500_000)
    assert (optim.warmup_steps_at(64), optim.warmup_steps_at(512)) == (7813, 977)


def test_warmup_steps_keep_their_schedule_and_exclude_warmup_images():
    assert lrs(OptimConfig(warmup_steps=4), 64, 6) == pytest.approx([.25, .5, .75, 1, 1, 1])
    assert lrs(OptimConfig(warmup_steps=0), 64, 2) == [1.0, 1.0]
    assert OptimConfig().warmup_images_at(32) == 200 * 32  # the default: 200 steps
    assert OptimConfig(warmup_images=640).warmup_steps is None  # replaces the default
    with pytest.raises(ValidationError, match=r"give optim.warmup_steps or optim.warmup_images, "
                       r"not both \(got 10 and 640\)"):
        OptimConfig(warmup_steps=10, warmup_images=640)
    with pytest.raises(ValidationError, match="give optim.ema_decay or optim.ema_images"):
        OptimConfig(ema_decay=0.99, ema_images=6400)


def test_ema_in_images_spans_the_same_images_at_any_batch():
    optim = OptimConfig(ema_images=50_000)
    assert optim.ema_decay_at(512) == pytest.approx(1 - 512 / 50_000)
    # the weight left on the weights of 50,000 images ago: about 1/e at batch 64 and 512
    left = [optim.ema_decay_at(b) ** (50_000 / b) for b in (64, 512)]
    assert left == pytest.approx([math.exp(-1)] * 2, rel=0.01)
    assert OptimConfig(ema_decay=0.9).ema_decay_at(512) == 0.9
    assert OptimConfig().ema_decay_at(512) is None
    with pytest.raises(ValidationError, match=r"optim.ema_images=64 must exceed batch_size=64"):
        TrainConfig.model_validate(tiny_train(optim={"ema_images": 64}))


def test_the_training_state_uses_the_resolved_decay_and_warm_up():
    cfg = TrainConfig.model_validate(tiny_train(
        batch_size=64, scaling={"num_workers": 1},
        optim={"warmup_images": 256, "ema_images": 6400}))
    model_cfg = cfg.model.model_copy(update={"image_shape": (1, 8, 8), "n_bins": 17})
    state = build_state(cfg, model_cfg, WorkerInfo(threads=1))
    assert state.ema.decay == pytest.approx(1 - 64 / 6400)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr / 4)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_the_cifar10_profile_keeps_its_global_recipe_on_n_gpus(gpus):
    """`--set train.scaling.num_workers=N`: 512/N per GPU, glow's warm-up and EMA in images."""
    cfg = load_config(REPO / "pipeline.yaml", "cifar10",
                      [f"train.scaling.num_workers={gpus}"]).train
    assert (cfg.batch_size, per_worker_batch(cfg.batch_size, gpus)) == (512, 512 // gpus)
    assert cfg.optim.warmup_images_at(cfg.batch_size) == 10 * 50_000  # glow: 10 epochs
    assert cfg.optim.warmup_steps_at(cfg.batch_size) == 977
    assert cfg.optim.ema_decay_at(cfg.batch_size) == pytest.approx(1 - 512 / 50_000)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamax", 1e-3, 0.0)
    assert cfg.optim.betas == (0.9, 0.9898) and cfg.optim.ema_debias  # glow: beta2 1 - 1/98
    assert cfg.epochs * (45_000 // 512) * 512 == 89_088_000  # ~90 M images, as glow's logs

