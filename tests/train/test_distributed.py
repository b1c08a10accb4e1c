"""Ray Train specifics: DDP averages gradients exactly; a 1-worker Ray run equals the plain loop."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from train_helpers import tiny_train

from data_prep import Manifest, make_loader
from flows.config import ModelConfig
from train.config import TrainConfig
from train.ddp import WorkerInfo, gather_digests
from train.distributed import fit
from train.hooks import FaultInjection
from train.loop import TrainJob, resolve_model_config, train, train_step
from train.state import build_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _one_step(cfg: TrainConfig, model_cfg: ModelConfig, world: WorkerInfo, x, u) -> dict:
    """Fresh model (rank 0 initialises on x), one step on this rank's share of x with
    dequantisation noise u (float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        state = build_state(cfg, model_cfg, world, init_x=x if world.is_chief else None)
        share = world.rank, world.world_size
        train_step(state, x.chunk(share[1])[share[0]], cfg, noise=u.chunk(share[1])[share[0]])
        return {  # numpy: Ray Train refuses tensors in return values
            "grads": {n: p.grad.numpy().copy() for n, p in state.model.named_parameters()},
            "weights": {k: v.numpy().copy() for k, v in state.model.state_dict().items()},
            "digests": gather_digests(state.model, world),
        }
    finally:
        torch.set_default_dtype(torch.float32)


def test_two_ranks_average_gradients_like_one_rank_on_the_whole_batch(
    digits_manifest, tmp_path
):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = TrainConfig.model_validate(tiny_train("glow", optim={"grad_clip": None}))
    manifest = Manifest.load(digits_manifest)
    model_cfg = resolve_model_config(cfg, manifest)
    x, _ = next(iter(make_loader(manifest, "train", 64)))
    noise = torch.Generator().manual_seed(0)
    u = torch.rand(x.shape, generator=noise, dtype=torch.float64)

    def worker(config):
        import ray.train

        context = ray.train.get_context()
        world = WorkerInfo(context.get_world_rank(), context.get_world_size(), threads=1)
        return _one_step(cfg, model_cfg, world, x, u)

    this_module = sys.modules[__name__]  # workers cannot import test modules: ship it by value
    cloudpickle.register_pickle_by_value(this_module)
    try:
        result = TorchTrainer(
            worker,
            scaling_config=ScalingConfig(num_workers=2),
            torch_config=TorchConfig(backend="gloo", timeout_s=60),
            run_config=RunConfig(name="ddp-grads", storage_path=str(tmp_path)),
        ).fit()
    finally:
        cloudpickle.unregister_pickle_by_value(this_module)
    single = _one_step(cfg, model_cfg, WorkerInfo(threads=1), x, u)

    ddp = result.return_value
    assert ddp["digests"][0] == ddp["digests"][1]
    for kind in ("weights", "grads"):
        for name, value in single[kind].items():
            np.testing.assert_allclose(ddp[kind][name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def test_one_worker_ray_run_equals_the_plain_loop(digits_manifest, tmp_path):
    cfg = TrainConfig.model_validate(
        tiny_train("glow", epochs=1, scaling={"num_workers": 1}, eval_at_start=False)
    )
    job = TrainJob(str(digits_manifest), run_dir=str(tmp_path / "run"), verbose=False)

    fitted = fit(cfg, job, tmp_path / "ray", "repro")
    threads = torch.get_num_threads()
    try:
        local = train(cfg, job, WorkerInfo(threads=1), lambda metrics, ckpt: None)
    finally:
        torch.set_num_threads(threads)

    assert fitted.best_metrics["epoch"] == 1
    assert fitted.summary["final"]["train_bpd"] == pytest.approx(local["final"]["train_bpd"])
    assert fitted.best_metrics["test_bpd"] == pytest.approx(local["final"]["test_bpd"], abs=1e-9)



def test_divergence_under_ray_train_stops_with_the_guard_error(
    digits_manifest, tmp_path, monkeypatch
):
    """train_worker returns the NonFiniteLossError (so Ray does not retry it); fit re-raises.

    Ray Train's local mode (num_workers=0) runs the real worker function in this process.
    """
    from ray.train import ScalingConfig

    from train import distributed
    from train.loop import NonFiniteLossError

    monkeypatch.setattr(distributed, "scaling_config", lambda spec: ScalingConfig(num_workers=0))
    cfg = TrainConfig.model_validate(
        tiny_train("glow", epochs=1, scaling={"num_workers": 1}, max_failures=3,
                   max_nonfinite_steps=3)
    )
    job = TrainJob(str(digits_manifest), verbose=False, hooks=FaultInjection(nan_from_step=5))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(NonFiniteLossError, match="at step 7"):
            fit(cfg, job, tmp_path, "diverges")
    finally:
        torch.set_num_threads(threads)


def test_more_workers_than_the_cluster_has_fails_fast():
    from train.distributed import check_resources

    spec = TrainConfig.model_validate(tiny_train(scaling={"num_workers": 64})).scaling
    with pytest.raises(ValueError, match="asks for 64 CPU"):
        check_resources(spec)
    check_resources(spec.model_copy(update={"num_workers": 2}))


def test_actnorm_init_gathers_256_images_over_ranks_and_every_rank_matches(
    digits_manifest, tmp_path
):
    """8 images per rank per step: the data-dependent init gathers 128 from each of the two
    ranks' first batches; after it every rank holds bit-identical weights and buffers."""
    cfg = TrainConfig.model_validate(
        tiny_train("glow", epochs=1, batch_size=16, eval_at_start=False, init_images=256)
    )
    job = TrainJob(str(digits_manifest), run_dir=str(tmp_path / "run"), verbose=False)
    summary = fit(cfg, job, tmp_path / "ray", "init256").summary
    assert summary["init_images"] == 256  # > one rank's 8-image batch, > one rank's share
    digests = summary["init_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary["step1_digests"][0] == summary["step1_digests"][1]
