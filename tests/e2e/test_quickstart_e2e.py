"""The default pipeline end to end, as `make run` runs it, with tiny settings (the session's
`quickstart` run): every stage runs, the champion is registered and served locally, and a
second run skips every stage.

Its captured output (not a terminal) is what a log shows: no Ray report lines, no colour
codes, no traceback, the summary and the "next" block last. It runs with a stale `ray start`
address file in Ray's temp folder (a killed head leaves one): the embedded Ray never asks it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from e2e_helpers import nfpipe_run

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[")


def test_default_pipeline_runs_every_stage_then_skips_them_all(quickstart):
    tmp_path, first = quickstart
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
    # the champion came with its class directions: the Fig. 5 strip and Fig. 6 row, in MLflow
    evaluated = records["evaluate"]["outputs"]["model_dir"]
    assert (Path(evaluated) / "attributes.safetensors").is_file()
    deployed = records["deploy"]["outputs"]
    assert {Path(deployed["interpolation"]).name, Path(deployed["manipulation"]).name} == {
        "interp.png", "manipulate.png"} and Path(deployed["manipulation"]).is_file()
    import tracking

    # the registry too: a plain MlflowClient would read the registry of whatever store an
    # earlier test in this process pointed MLflow at
    client = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version(promote["model_name"], promote["version"])
    logged = {Path(a.path).name for a in client.list_artifacts(version.run_id, "deploy")}
    assert logged == {"interp.png", "manipulate.png"}

    second = nfpipe_run(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.stdout.count("up to date, skipped") == 6
    assert "this run" not in second.stdout  # it registered nothing

    # promote alone reads tune's record (evaluate stays up to date)
    third = nfpipe_run(tmp_path, "--stages", "promote")
    assert third.returncode == 0, third.stdout[-3000:]
    assert third.stdout.count("up to date, skipped") == 4
    assert "evaluate reads tune from an earlier run" in third.stdout
