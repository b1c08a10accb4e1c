"""`nfpipe run --stages train --force` after a finished run (issue 15 row 4): trains afresh in
a new Ray run and a new MLflow run, keeps the old ones; without --force the stage resumes (the
forced run, once there is one)."""

from __future__ import annotations

import dataclasses

import pytest
from mlflow import MlflowClient
from train_helpers import check_forced_run, progress_epochs, tiny_train

pytestmark = pytest.mark.slow  # three Ray Train runs


def test_force_trains_a_new_run_and_keeps_the_old(make_ctx, mlflow_uri):
    from pipeline.stages import train as stage

    ctx = dataclasses.replace(make_ctx(tiny_train("nice", epochs=1)), fingerprint="fp")
    first = stage.run(ctx)
    forced = stage.run(dataclasses.replace(ctx, force=True))
    check_forced_run(first, forced, MlflowClient(mlflow_uri))

    again = stage.run(ctx)  # no --force: the run of this config is found again, no training
    assert again["ray_run"] == forced["ray_run"] and again["run_id"] == forced["run_id"]
    assert progress_epochs(again) == [0, 1]
