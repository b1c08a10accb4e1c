"""Data parallelism of every model family on a real 2-rank gloo group, without Ray.

One spawn of two ranks runs, for each family: one optimiser step on a shared batch (DDP must
average the ranks' gradients exactly and leave bit-identical weights), then the loop's own
start of a run (`init_batch`, `build_state`, a first step) with a data-dependent init larger
than one rank's batch (the init must see images of both ranks, and every rank must hold rank
0's weights), then Dynamo's capture of the DDP objective that `train.compile` compiles (one
graph, no break, on rank 0 and on rank 1, whose ActNorms were initialised by the broadcast,
at two batch sizes). Ray Train's part (placing the
workers, checkpoints, reports) is tested once, in test_train_stage.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ddp_harness import run_ranks
from train_helpers import TINY_MODELS, tiny_train

from data_prep import Manifest, make_loader
from train.config import TrainConfig
from train.ddp import WorkerInfo, gather_digests
from train.loop import init_batch, resolve_model_config, train_loader, train_step
from train.state import build_state

pytestmark = pytest.mark.slow  # two spawned processes, five models (about 15 s)

INIT_IMAGES = 256  # > one rank's 32-image batch and > one rank's share (128)
STEP_SEED = 1000  # + rank: the latent noise of the variational models in the one step


def one_step(family: str, manifest_path: str, world: WorkerInfo, share: int) -> dict:
    """A fresh model (rank 0 initialises on the whole batch), one float64 step on batch part
    `share` of 2 with fixed dequantisation noise and latent noise seeded by the part."""
    cfg = TrainConfig.model_validate(tiny_train(family, optim={"grad_clip": None}))
    model_cfg = resolve_model_config(cfg, Manifest.load(manifest_path))
    x, u = shared_batch(manifest_path)
    torch.set_default_dtype(torch.float64)
    try:
        state = build_state(cfg, model_cfg, world, init_x=x if world.is_chief else None)
        torch.manual_seed(STEP_SEED + share)
        train_step(state, x.chunk(2)[share], cfg, noise=u.chunk(2)[share])
        return {
            "grads": {n: p.grad.numpy().copy() for n, p in state.model.named_parameters()},
            "weights": {k: v.numpy().copy() for k, v in state.model.state_dict().items()},
            "digests": gather_digests(state.model, world),
        }
    finally:
        torch.set_default_dtype(torch.float32)


def shared_batch(manifest_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 training images and float64 dequantisation noise, alike on every rank."""
    x, _ = next(iter(make_loader(Manifest.load(manifest_path), "train", 64)))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, u


def init_and_step(family: str, manifest_path: str, world: WorkerInfo) -> dict:
    """What the loop does before and at its first step: gather INIT_IMAGES over the ranks,
    initialise on rank 0 and share its weights, one step on this rank's first batch."""
    cfg = TrainConfig.model_validate(tiny_train(family, init_images=INIT_IMAGES))
    manifest = Manifest.load(manifest_path)
    state = build_state(cfg, resolve_model_config(cfg, manifest), world,
                        init_batch(cfg, manifest, world))
    x, _ = next(iter(train_loader(cfg, manifest, world, epoch=1)))
    train_step(state, x, cfg)
    return {"init_images": state.init_images, "init_digests": state.init_digests,
            "step1_digests": gather_digests(state.model, world)}


def captured_graphs(family: str, manifest_path: str, world: WorkerInfo) -> list[tuple]:
    """(graphs, breaks, reasons) of Dynamo's capture of this rank's DDP objective (what
    `train.compile` compiles, `torch._dynamo.explain`), at two batch sizes."""
    cfg = TrainConfig.model_validate(tiny_train(family))
    x, _ = shared_batch(manifest_path)
    state = build_state(cfg, resolve_model_config(cfg, Manifest.load(manifest_path)), world,
                        init_x=x if world.is_chief else None)
    torch._dynamo.reset()
    explained = [torch._dynamo.explain(state.objective)(x[:n]) for n in (16, 12)]
    return [(e.graph_count, e.graph_break_count, [str(r.reason) for r in e.break_reasons])
            for e in explained]


def every_family(world: WorkerInfo, manifest_path: str) -> dict[str, dict]:
    """What each rank saw, per family: its one step, its epoch and its compiled objective."""
    return {
        family: {"step": one_step(family, manifest_path, world, share=world.rank),
                 "init": init_and_step(family, manifest_path, world),
                 "graphs": captured_graphs(family, manifest_path, world)}
        for family in TINY_MODELS
    }


@pytest.fixture(scope="module")
def ranks(digits_manifest) -> list[dict[str, dict]]:
    return run_ranks(every_family, str(digits_manifest), world_size=2)


@pytest.fixture(scope="module")
def alone(digits_manifest) -> dict[str, list[dict]]:
    """Each family's step on each half of the batch in this one process, no process group."""
    return {family: [one_step(family, str(digits_manifest), WorkerInfo(threads=1), share)
                     for share in (0, 1)]
            for family in TINY_MODELS}


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_ranks_average_gradients_and_hold_identical_weights(family, ranks, alone):
    rank0, rank1 = (rank[family]["step"] for rank in ranks)
    assert rank0["digests"] == rank1["digests"] and rank0["digests"][0] == rank0["digests"][1]
    halves = alone[family]
    for name in rank0["grads"]:  # DDP's gradient is the mean of the ranks' own gradients
        expected = (halves[0]["grads"][name] + halves[1]["grads"][name]) / 2
        for rank in (rank0, rank1):
            np.testing.assert_allclose(rank["grads"][name], expected, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{family} {name}")


@pytest.mark.parametrize("family", ["glow", "realnvp", "nice"])
def test_two_ranks_step_like_one_rank_on_the_whole_batch(family, ranks, digits_manifest):
    """Exact flows have no latent noise: the 2-rank step equals a 1-rank step on the whole
    batch, gradients and weights after the update."""
    cfg = TrainConfig.model_validate(tiny_train(family, optim={"grad_clip": None}))
    model_cfg = resolve_model_config(cfg, Manifest.load(digits_manifest))
    x, u = shared_batch(str(digits_manifest))
    torch.set_default_dtype(torch.float64)
    try:
        state = build_state(cfg, model_cfg, WorkerInfo(threads=1), init_x=x)
        train_step(state, x, cfg, noise=u)
    finally:
        torch.set_default_dtype(torch.float32)
    ddp = ranks[0][family]["step"]
    for name, p in state.model.named_parameters():
        np.testing.assert_allclose(ddp["grads"][name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    for name, value in state.model.state_dict().items():
        np.testing.assert_allclose(ddp["weights"][name], value.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_init_gathers_images_of_every_rank_and_every_rank_matches(family, ranks):
    """init_images = 256 with 32 images per rank and step: the init gathers 128 from each rank
    (several batches each); after it, and after step 1, both ranks hold bit-identical weights
    and buffers (ActNorm's initialised flag included)."""
    inits = [rank[family]["init"] for rank in ranks]
    assert inits[0]["init_images"] == INIT_IMAGES  # rank 0 initialises, the others receive
    for key in ("init_digests", "step1_digests"):
        digests = inits[0][key]
        assert len(digests) == 2 and digests[0] == digests[1], key
        assert inits[1][key] == digests, key


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_every_rank_compiles_the_ddp_objective_to_one_graph(family, ranks):
    """Rank 1 never ran the data-dependent init (its ActNorms came by broadcast): its capture
    must not break at the init check either; and a second batch size captures again."""
    for rank, seen in enumerate(ranks):
        assert seen[family]["graphs"] == [(1, 0, []), (1, 0, [])], (rank, seen[family]["graphs"])
