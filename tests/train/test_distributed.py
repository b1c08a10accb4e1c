"""Ray Train specifics: a 1-worker Ray run equals the plain loop; divergence stops with the
guard's error; a run that cannot be placed fails fast. (DDP itself, every family on a real
2-rank gloo group without Ray, is test_ddp.py's.)"""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_train

from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.distributed import fit
from train.hooks import FaultInjection
from train.loop import TrainJob, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


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
    assert fitted.best_metrics["val_bpd"] == pytest.approx(local["final"]["val_bpd"], abs=1e-9)



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
