"""The default pipeline end to end, as `make run` runs it, with tiny settings: every stage runs,
the champion is registered and served locally, and a second run skips every stage."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import REPO, VENV_BIN, subprocess_env

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


def nfpipe_run(cwd) -> subprocess.CompletedProcess:
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run(
        [str(VENV_BIN / "nfpipe"), "run", *sets],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )


def test_default_pipeline_runs_every_stage_then_skips_them_all(tmp_path):
    shutil.copy(REPO / "pipeline.yaml", tmp_path / "pipeline.yaml")
    first = nfpipe_run(tmp_path)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
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
