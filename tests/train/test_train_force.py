"""`nfpipe run --stages train --force` after a finished run (issue 15 row 4): trains afresh in
a new Ray run and a new MLflow run, keeps the old ones; without --force the stage resumes (the
forced run, once there is one)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from train_helpers import tiny_train

pytestmark = pytest.mark.slow  # three Ray Train runs


def _epochs(out: dict) -> list[int]:
    """The epochs rank 0 trained in this Ray run, from its progress lines."""
    lines = (Path(out["ray_run"]) / "progress.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def test_force_trains_a_new_run_and_keeps_the_old(make_ctx, mlflow_uri):
    from pipeline.stages import train as stage

    ctx = dataclasses.replace(make_ctx(tiny_train("nice", epochs=1)), fingerprint="fp")
    first = stage.run(ctx)
    forced = stage.run(dataclasses.replace(ctx, force=True))

    assert forced["ray_run"] != first["ray_run"] and forced["run_id"] != first["run_id"]
    assert _epochs(forced) == [0, 1]  # trained from scratch: epoch 0 is the initial model
    assert Path(first["ray_run"]).is_dir() and _epochs(first) == [0, 1]  # the old run kept
    client = MlflowClient(mlflow_uri)
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert client.get_run(forced["run_id"]).info.status == "FINISHED"

    again = stage.run(ctx)  # no --force: the run of this config is found again, no training
    assert again["ray_run"] == forced["ray_run"] and again["run_id"] == forced["run_id"]
    assert _epochs(again) == [0, 1]
