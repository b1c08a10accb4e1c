"""`nfpipe submit/status/logs/stop` against a real Ray head started by the test (Jobs API)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import (
    REPO,
    VENV_BIN,
    LocalRayCluster,
    cluster_local_settings,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray-head"))
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


def nfpipe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "nfpipe"), *args],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )


def job_status(head: LocalRayCluster, job_id: str) -> dict:
    proc = nfpipe("status", job_id, "--address", head.dashboard)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_submitted_pipeline_succeeds_and_status_and_logs_work(head, tmp_path):
    proc = nfpipe(
        "submit", "--address", head.dashboard, "--stages", "data_prep", "--wait",
        *cluster_local_settings(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert (tmp_path / "shards" / "digits-8x8-5bit" / "manifest.json").exists()
    status = job_status(head, job_id)
    assert status["status"] == "SUCCEEDED"
    assert status["stage"] == "data_prep (done)"
    logs = nfpipe("logs", job_id, "--address", head.dashboard)
    assert logs.returncode == 0 and "data_prep" in logs.stdout


def test_stop_stops_a_running_job(head, tmp_path):
    proc = nfpipe(
        "submit", "--address", head.dashboard, "--stages", "train",
        "--set", "train.epochs=500", *cluster_local_settings(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    wait_until(lambda: job_status(head, job_id)["status"] == "RUNNING", 120, "job running")
    stop = nfpipe("stop", job_id, "--address", head.dashboard)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    wait_until(lambda: job_status(head, job_id)["status"] == "STOPPED", 120, "job stopped")


def test_submit_to_a_head_whose_python_lacks_a_module_refuses_in_one_line(tmp_path, monkeypatch):
    """A head whose Python cannot import `rich` (a `rich.py` that raises ImportError first on
    the PYTHONPATH of its `ray start`, which its jobs inherit): `submit` sends only its probe
    and stops with one line that says what to do; no pipeline job runs."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "rich.py").write_text("raise ImportError('No module named rich (test head)')\n")
    broken = LocalRayCluster(tmp_path / "ray-head")
    (tmp_path / "ray-head").mkdir()
    try:
        with monkeypatch.context() as env:  # read by the head's subprocess_env only
            env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
                str(shadow), os.environ.get("PYTHONPATH")])))
            broken.start_head(num_cpus=1)
        proc = nfpipe("submit", "--address", broken.dashboard, "--stages", "data_prep",
                      *cluster_local_settings(tmp_path))
        from ray.job_submission import JobSubmissionClient

        jobs = JobSubmissionClient(broken.dashboard).list_jobs()
    finally:
        broken.stop()
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot import rich (ImportError: No module named rich (test head))" in line
    assert "source .venv/bin/activate" in line
    assert not [job for job in jobs if "pipeline.cli" in job.entrypoint]
    assert not (tmp_path / "shards").exists()
