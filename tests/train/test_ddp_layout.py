"""DDP's gradient buckets take every parameter's gradient as it is laid out: no "Grad strides
do not match bucket view strides" warning (a copy of that gradient on every step) on a real
2-rank gloo group, for every model family, the quickstart's model (RealNVP, variational
dequantisation, EMA) and `channels_last`.

Torch warns once per process, so each rank records every warning of its steps (the first
mismatch of any config fails the test, and names the sizes of the gradient).
"""

from __future__ import annotations

import warnings

import pytest
from ddp_harness import run_ranks
from helpers import REPO
from train_helpers import TINY_MODELS, tiny_train

from data_prep import Manifest
from pipeline.config import load_config
from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.loop import init_batch, resolve_model_config, train_loader, train_step
from train.state import build_state

pytestmark = pytest.mark.slow  # two spawned processes, a few models (about 20 s)

STRIDES = "Grad strides do not match bucket view strides"


def quickstart_train() -> dict:
    """pipeline.yaml's `train:` section (the quickstart's model and optimiser, EMA included)."""
    return load_config(REPO / "pipeline.yaml").train.model_dump(mode="json")


CONFIGS = {
    **{family: tiny_train(family) for family in TINY_MODELS},
    **{f"{family}-channels_last": tiny_train(family, channels_last=True)
       for family in ("glow", "realnvp", "vae", "fvae")},
    "quickstart": quickstart_train(),
}


def stride_warnings(world: WorkerInfo, manifest_path: str, configs: dict[str, dict]) -> dict:
    """Per config: the stride warnings of the loop's start of a run and two steps."""
    manifest = Manifest.load(manifest_path)
    found = {}
    for name, section in configs.items():
        cfg = TrainConfig.model_validate(section)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = build_state(cfg, resolve_model_config(cfg, manifest), world,
                                init_batch(cfg, manifest, world))
            x, _ = next(iter(train_loader(cfg, manifest, world, epoch=1)))
            for _ in range(2):
                train_step(state, x, cfg)
        found[name] = [str(w.message) for w in caught if STRIDES in str(w.message)]
    return found


def test_no_config_makes_ddp_copy_a_gradient_of_another_layout(digits_manifest):
    ranks = run_ranks(stride_warnings, str(digits_manifest), CONFIGS, world_size=2)
    for rank in ranks:
        assert set(rank) == set(CONFIGS)
        assert {name: found for name, found in rank.items() if found} == {}
