"""The train stage end to end on Ray Train: 2 workers (gloo), real shards, a real MLflow store.

One run, of Glow: what Ray Train adds to the stage (placing the workers, its checkpoints and
reports, the two ranks' weight digests reaching the run). What the stage records is checked for
every family without Ray (test_train_stage_in_process.py), and DDP for every family on a real
2-rank gloo group (test_ddp.py).
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from train_helpers import check_stage_run, tiny_train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_two_worker_run(make_ctx, mlflow_uri, digits_manifest):
    from pipeline.stages import train as stage

    out = stage.run(make_ctx(tiny_train("glow")))

    run = check_stage_run(out, MlflowClient(mlflow_uri), "glow", digits_manifest)
    # DDP: both ranks held bit-identical weights after the first step
    digests = run.data.tags["nfpipe.ddp.step1_digests"].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]
