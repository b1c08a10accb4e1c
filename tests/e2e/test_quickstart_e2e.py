"""The default pipeline end to end, as `make run` runs it, with tiny settings: every stage runs,
the champion is registered and served locally, and a second run skips every stage.

Its captured output (not a terminal) is what a log shows: no Ray report lines, no colour
codes, no traceback, the summary and the "next" block last. It runs with a stale `ray start`
address file in Ray's temp folder (a killed head leaves one): the embedded Ray never asks it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import REPO, VENV_BIN, free_port, subprocess_env

pytestmark = pytest.mark.slow

TINY = {
    "train.epochs": 2,
    "train.eval_every": 1,
    "train.model.levels": 1,
    "train.model.steps": 1,
    "train.model.hidden": 8,
    "train.model.res_blocks": 1,
    "train.optim.warmup_steps": 10,
    "train.eval_k": 2,
    "tune.num_samples": 2,
    "tune.max_t": 1,
    "tune.verbose": "false",
    "evaluate.grid_samples": 16,
    "evaluate.k": 2,
}


ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def stale_ray_tmpdir():
    """Ray's temp folder holding the address file of a `ray start` head that is gone (a port
    nothing listens on). Short: Ray's socket paths must stay under 107 characters."""
    folder = Path(tempfile.mkdtemp(prefix="nfr", dir="/tmp"))
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def nfpipe_run(cwd, *args: str, ray_tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    extra = {"RAY_TMPDIR": str(ray_tmpdir)} if ray_tmpdir else {}
    return subprocess.run(
        [str(VENV_BIN / "nfpipe"), "run", *sets, *args],
        cwd=cwd, env=subprocess_env(**extra), capture_output=True, text=True, timeout=600,
    )


def test_default_pipeline_runs_every_stage_then_skips_them_all(tmp_path, stale_ray_tmpdir):
    shutil.copy(REPO / "pipeline.yaml", tmp_path / "pipeline.yaml")
    first = nfpipe_run(tmp_path, ray_tmpdir=stale_ray_tmpdir)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
    log = first.stdout + first.stderr
    assert "TrainingReport(" not in log and not ANSI.search(log)
    assert "Traceback" not in log and "Timed out while waiting for GCS" not in log, log[-5000:]
    assert re.search(r"train epoch 2/2 .* elapsed \d+:\d\d +eta 0:00", first.stdout)
    lines = [line for line in first.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("  serve it") and "pipeline summary" in first.stdout
    assert first.stdout.rindex("pipeline summary") < first.stdout.rindex("\nnext\n")
    records = {
        stage: json.loads((tmp_path / ".nfpipe" / "records" / f"{stage}.json").read_text())
        for stage in ("data_prep", "train", "tune", "evaluate", "promote", "deploy")
    }
    assert all(r["status"] == "ok" for r in records.values())
    promote = records["promote"]["outputs"]
    assert promote["promoted"] and promote["champion_version"] == promote["version"]
    assert 1.0 < records["evaluate"]["outputs"]["test_bpd"] < 6.0
    assert (tmp_path / "mlflow.db").exists()
    assert any(tmp_path.glob(".nfpipe/deploy/**/*.png"))

    second = nfpipe_run(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.stdout.count("up to date, skipped") == 6
    assert "this run" not in second.stdout  # it registered nothing (issue 15 row 14)

    # issue 15 row 3: promote alone reads tune's record (evaluate stays up to date)
    third = nfpipe_run(tmp_path, "--stages", "promote")
    assert third.returncode == 0, third.stdout[-3000:]
    assert third.stdout.count("up to date, skipped") == 4
    assert "evaluate reads tune from an earlier run" in third.stdout
