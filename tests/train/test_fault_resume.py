"""A worker dies mid-run: Ray restarts the group from the last checkpoint; a run that still
fails is resumed by running the stage again. No epoch is lost or logged twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from train_helpers import tiny_train

from flows.io import load_meta
from train.checkpoint import load_state, model_bundle
from train.hooks import FaultInjection

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

STEPS_PER_EPOCH = 19  # digits: 1258 train images // global batch 64


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's checkpoint folders by epoch."""
    folders = [c for c in run_dir.glob("checkpoint_*") if c.is_dir()]
    return {load_meta(model_bundle(c))["epoch"]: c for c in folders}


def test_injected_failures_restart_then_resume_without_lost_or_repeated_epochs(
    make_ctx, mlflow_uri, tmp_path
):
    from pipeline.stages import train as stage

    # step 30 is in epoch 2, step 50 in epoch 3; one automatic restart is allowed
    train = tiny_train(
        "glow",
        epochs=3,
        max_failures=1,
        checkpoints_keep=3,
    )
    faults = FaultInjection(fail_at_steps=(30, 50), fail_rank=1)
    ctx = make_ctx(train)
    with pytest.raises(Exception, match="injected failure at step 50"):
        stage.run(ctx, hooks=faults)

    (run_dir,) = (tmp_path / "work" / "ray_results").glob("t-train-*")
    assert (run_dir / "fault_injected_step30_rank1").exists()
    assert (run_dir / "fault_injected_step50_rank1").exists()
    # the restart after step 30 resumed from epoch 1 and completed epoch 2 before step 50
    assert sorted(_checkpoints(run_dir)) == [1, 2]
    client = MlflowClient(mlflow_uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("nfpipe").experiment_id])
    assert failed.info.status == "FAILED"

    out = stage.run(ctx, hooks=faults)  # `nfpipe run` again: same run name, resumes from epoch 2

    assert out["run_id"] == failed.info.run_id
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    steps = lambda key: [m.step for m in client.get_metric_history(out["run_id"], key)]  # noqa: E731
    assert steps("bpd/train") == [1, 2, 3]
    assert steps("bpd/val") == [0, 1, 2, 3]
    assert steps("step/train_bpd") == list(range(5, 3 * STEPS_PER_EPOCH + 1, 5))
    state = load_state(_checkpoints(run_dir)[3])
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2, 3]
    assert state["counters"]["step"] == 3 * STEPS_PER_EPOCH
    assert state["counters"]["resumes"] == 2  # one Ray restart, one re-run of the stage
