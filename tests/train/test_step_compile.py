"""One compiled graph on every rank and after a resume, for every family (Dynamo's capture
only: `torch._dynamo.explain`; `test_compile.py` compiles and runs the step)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TINY_MODELS, tiny_train

from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.state import build_state

DIGITS = {"image_shape": (1, 8, 8), "n_bins": 17}


def levels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def tiny_state(family: str, world: WorkerInfo | None = None, resume=None, **train):
    world = world or WorkerInfo()
    cfg = TrainConfig.model_validate(tiny_train(family, scaling={"num_workers": 1}, **train))
    init = levels(16) if resume is None and world.is_chief else None
    return cfg, build_state(cfg, cfg.model.model_copy(update=DIGITS), world, init, resume)


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_a_resumed_and_a_rank1_model_trace_to_one_graph(family):
    """Their ActNorms were initialised elsewhere (loaded or broadcast), so the model's
    check of the init flags has not run: it must stay out of the graph (it reads them)."""
    _, fresh = tiny_state(family)
    _, resumed = tiny_state(family, resume=fresh.snapshot())
    _, rank1 = tiny_state(family, world=WorkerInfo(rank=1))  # no init, no broadcast here
    rank1.model.load_state_dict(fresh.model.state_dict())  # what the broadcast copies in
    x = levels(8)
    for model in (resumed.model, rank1.model):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            explained.break_reasons


def test_the_compile_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from train.compile_cache import use_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("NFPIPE_COMPILE_CACHE", str(tmp_path / "node"))
    folder = use_compile_cache()
    assert folder == tmp_path / "node" and folder.is_dir()
    assert cache_dir() == str(folder)  # where inductor reads and writes its entries
    assert use_compile_cache(tmp_path / "explicit") == tmp_path / "explicit"
    assert cache_dir() == str(tmp_path / "explicit")
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.warns(RuntimeWarning, match="cannot be created"):
        assert use_compile_cache(blocked / "cache") is None
    assert cache_dir() == str(tmp_path / "explicit")  # unchanged
