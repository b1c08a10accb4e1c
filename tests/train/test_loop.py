"""The per-process loop without Ray (how a Tune trial runs it): guard, resume, determinism."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_train

from train.checkpoint import load_state
from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.hooks import NO_HOOKS, FaultInjection, TrainHooks
from train.loop import NonFiniteLossError, TrainJob, train

ONE_RANK = WorkerInfo(threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig.model_validate(
        tiny_train("glow", scaling={"num_workers": 1}, **overrides)
    )


def _run(cfg: TrainConfig, manifest: Path, resume=None, keep: Path | None = None,
         hooks: TrainHooks = NO_HOOKS):
    """Train in this process; with `keep`, copy each reported checkpoint there (by epoch)."""

    def report(metrics, checkpoint_dir):
        if keep is not None and checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, keep / f"epoch{int(metrics['epoch'])}")

    job = TrainJob(str(manifest), verbose=False, hooks=hooks)
    return train(cfg, job, ONE_RANK, report, resume)


def test_isolated_nonfinite_steps_are_skipped_and_counted(digits_manifest):
    out = _run(_cfg(epochs=1), digits_manifest, hooks=FaultInjection(nan_at_steps=(3, 4)))

    assert out["skipped_steps"] == 2
    assert out["final"]["skipped_steps"] == 2
    assert math.isfinite(out["final"]["train_bpd"]) and math.isfinite(out["final"]["val_bpd"])


def test_shards_without_a_val_split_are_refused_saying_how_to_rebuild(digits_manifest,
                                                                     tmp_path):
    from data_prep import DataPrepError, Manifest

    manifest = Manifest.load(digits_manifest)
    old = manifest.model_copy(update={"splits": {k: v for k, v in manifest.splits.items()
                                                 if k != "val"}})
    written = old.write(tmp_path / "manifest.json")  # as data_prep wrote it before val
    with pytest.raises(DataPrepError) as info:
        _run(_cfg(), Path(written))
    message = str(info.value)
    assert message.startswith(f"{written}: these shards have no 'val' split (has test, train)")
    assert "run data_prep again with data_prep.val_fraction > 0" in message
    assert "nfpipe run --stages data_prep --force" in message


def test_persistent_nonfinite_loss_stops_naming_the_step(digits_manifest):
    cfg = _cfg(epochs=1, max_nonfinite_steps=3)

    with pytest.raises(NonFiniteLossError, match="at step 7: 3 steps in a row"):
        _run(cfg, digits_manifest, hooks=FaultInjection(nan_from_step=5))


def test_same_seed_same_bpd_and_resume_continues_exactly(digits_manifest, tmp_path):
    cfg = _cfg(eval_at_start=False)
    straight = _run(cfg, digits_manifest, keep=tmp_path)
    again = _run(cfg, digits_manifest)
    resumed = _run(cfg, digits_manifest, resume=load_state(tmp_path / "epoch1"))
    other_seed = _run(cfg.model_copy(update={"seed": 1}), digits_manifest)

    final = straight["final"]
    assert again["final"]["val_bpd"] == final["val_bpd"]
    assert again["final"]["train_bpd"] == final["train_bpd"]
    # resuming from the epoch-1 checkpoint replays epoch 2 exactly (data order, noise, Adam)
    assert resumed["final"]["val_bpd"] == final["val_bpd"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["resumes"] == 1
    assert other_seed["final"]["val_bpd"] != final["val_bpd"]


def test_actnorm_init_takes_init_images_over_several_batches(digits_manifest):
    from data_prep import Manifest
    from train.loop import init_batch

    cfg = _cfg(batch_size=16, init_images=100)
    images = init_batch(cfg, Manifest.load(digits_manifest), ONE_RANK)
    assert images.shape == (100, 1, 8, 8) and images.dtype == torch.uint8
    assert len({bytes(x.numpy()) for x in images}) > 90  # distinct images, not one batch


def test_debiased_ema_forgets_the_initial_weights():
    from torch import nn

    from train.optim import Ema

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(10.0)  # the initial weights
    plain, debiased = Ema(model, 0.99, debias=False), Ema(model, 0.99, debias=True)
    with torch.no_grad():
        model.weight.fill_(1.0)  # every later iterate
    for _ in range(5):
        plain.update(model)
        debiased.update(model)
    assert debiased.module.weight.item() == pytest.approx(1.0)  # no trace of the 10
    assert plain.module.weight.item() == pytest.approx(1.0 + 9.0 * 0.99**5)
    assert debiased.weight(1) == pytest.approx(1.0)
    assert debiased.weight(10**6) == pytest.approx(0.01)


def test_weight_decay_spares_weight_norm_directions():
    from flows import ModelConfig, build_model
    from train.config import OptimConfig
    from train.optim import WEIGHT_NORM_DIRECTION, build_optimizer

    model = build_model(ModelConfig(name="realnvp", image_shape=(1, 4, 4), n_bins=16, levels=1,
                                    steps=1, hidden=8, res_blocks=1, weight_norm=True))
    optimizer = build_optimizer(model, OptimConfig(weight_decay=1e-3))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {g["weight_decay"]: [names[id(p)] for p in g["params"]]
             for g in optimizer.param_groups}
    assert decay[0.0] and all(n.endswith(WEIGHT_NORM_DIRECTION) for n in decay[0.0])
    assert not any(n.endswith(WEIGHT_NORM_DIRECTION) for n in decay[1e-3])
    assert len(decay[0.0]) + len(decay[1e-3]) == len(names)
