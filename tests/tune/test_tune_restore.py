"""A sweep whose driver is killed (SIGKILL) after a trial finished resumes with Tuner.restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env, wait_until
from mlflow import MlflowClient
from rich.console import Console
from tune_helpers import pipeline_dict, read_starts, recording_starts

from pipeline.config import validate
from pipeline.stages.tune import sweep_spec
from tune.sweep import run_sweep

pytestmark = pytest.mark.slow

NAME = "restore-test"
MAX_T = 3
TUNE = {
    "space": {"model.coupling": ["affine", "additive"], "optim.lr": {"loguniform": [1e-3, 3e-3]}},
    "num_samples": 3,
    "scheduler": "fifo",
    "max_t": MAX_T,
    "max_concurrent_trials": 1,
    "verbose": False,
}
CHILD = """
import json, os, sys
from pathlib import Path
import ray
from rich.console import Console
from pipeline.config import validate
from pipeline.stages.tune import sweep_spec
from tune.sweep import run_sweep
sys.path.insert(0, os.environ["SWEEP_HELPERS"])
from tune_helpers import recording_starts
cfg = validate(json.loads(os.environ["SWEEP_CFG"]))
ray.init(address=os.environ["SWEEP_GCS"], log_to_driver=False)
spec = sweep_spec(cfg, sys.argv[1], Path(sys.argv[2]), sys.argv[3])
# each epoch's state lasts >= SWEEP_PAUSE_S, so the test sees it however fast trials train
run_sweep(recording_starts(spec, float(os.environ["SWEEP_PAUSE_S"])), Console(quiet=True))
"""


def trial_states(exp_dir: Path) -> dict[str, tuple[str, dict]]:
    """trial id -> (status, last result) from Tune's saved experiment state."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except json.JSONDecodeError:
        return {}
    trials = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        trials[trial["trial_id"]] = (trial["status"], runtime.get("last_result") or {})
    return trials


def finished_one_and_checkpointed_another(exp_dir: Path) -> bool:
    statuses = trial_states(exp_dir).values()
    return any(s == "TERMINATED" for s, _ in statuses) and any(
        s == "RUNNING" and r.get("checkpoint_dir_name") for s, r in statuses
    )


def test_killed_sweep_resumes_and_does_not_rerun_finished_trials(
    ray_local, tmp_path, shards_root, manifest_path
):
    pipeline = pipeline_dict(tmp_path, shards_root, TUNE)
    # the default keep of 2: with 1, a driver killed after Tune deleted a trial's older
    # checkpoint but before it saved its experiment state leaves a state that names the
    # deleted one, and Tune cannot restore that trial
    pipeline["train"] = {**pipeline["train"], "checkpoints_keep": 2}
    cfg = validate(pipeline)
    out = tmp_path / "out"
    exp_dir = out / "ray_results" / NAME
    env = subprocess_env(
        SWEEP_CFG=cfg.model_dump_json(),
        SWEEP_GCS=ray_local.get_runtime_context().gcs_address,
        SWEEP_HELPERS=str(Path(__file__).parent),
        TUNE_GLOBAL_CHECKPOINT_S="0",  # save the experiment state at every step
        SWEEP_PAUSE_S="2",  # > the 0.5 s poll below: the state to kill in cannot be missed
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(manifest_path), str(out), NAME],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: finished_one_and_checkpointed_another(exp_dir) or driver.poll() is not None,
            180, "a finished trial and a checkpointed running one",
        )
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        at_kill = trial_states(exp_dir)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the whole driver, as a crash would
        driver.wait(30)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    finished_before = [
        f"trial_{r.data.tags['nfpipe.tune_trial']}"
        for r in client.search_runs([experiment_id], "tags.`nfpipe.role` = 'trial'")
        if r.info.status == "FINISHED"
    ]
    assert finished_before, "no trial had finished before the kill"

    spec = recording_starts(sweep_spec(cfg, manifest_path, out, NAME))
    result = run_sweep(spec, Console(quiet=True))

    starts = {d.name: read_starts(d) for d in exp_dir.glob("trial_*")}
    assert len(starts) == TUNE["num_samples"]
    for done in finished_before:
        assert len(starts[done]) == 1, f"{done} was run again: {starts}"
    interrupted = {f"trial_{tid}": last["epoch"] for tid, (status, last) in at_kill.items()
                   if status == "RUNNING" and last.get("checkpoint_dir_name")}
    assert interrupted
    for name, epoch in interrupted.items():  # resumed from its checkpoint, not from scratch
        assert [a["start_epoch"] for a in starts[name]][0] == 0
        assert starts[name][-1]["start_epoch"] >= epoch >= 1, starts[name]
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags.get("nfpipe.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("nfpipe.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert len(children) == TUNE["num_samples"]
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "bpd/val")]
        assert sorted(steps) == list(range(1, MAX_T + 1)), steps  # no epoch logged twice
        assert child.info.status == "FINISHED"
    assert result.trial_epochs == TUNE["num_samples"] * MAX_T
    assert Path(result.model_dir, "model.safetensors").exists()
