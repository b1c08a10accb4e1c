"""The train stage end to end: 2 Ray Train workers (gloo), real shards, a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from train_helpers import TINY_MODELS, check_stage_run, tiny_train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_two_worker_run_of_each_family(family, make_ctx, mlflow_uri, digits_manifest):
    from pipeline.stages import train as stage

    out = stage.run(make_ctx(tiny_train(family)))

    run = check_stage_run(out, MlflowClient(mlflow_uri), family, digits_manifest)
    # DDP: both ranks held bit-identical weights after the first step
    digests = run.data.tags["nfpipe.ddp.step1_digests"].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]
