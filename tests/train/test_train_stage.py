"""The train stage end to end: 2 Ray Train workers (gloo), real shards, a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import logged_images
from mlflow import MlflowClient
from train_helpers import TINY_MODELS, tiny_train

from flows.io import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_two_worker_run_of_each_family(family, make_ctx, mlflow_uri, digits_manifest):
    from pipeline.stages import train as stage

    ctx = make_ctx(tiny_train(family))
    out = stage.run(ctx)

    # outputs later stages read; the bundle rebuilds from its own files
    assert {"model_dir", "checkpoint", "run_id", "test_bpd"} <= set(out)
    model = load_model(out["model_dir"])
    meta = json.loads((Path(out["model_dir"]) / "meta.json").read_text())
    manifest = json.loads(Path(digits_manifest).read_text())
    assert model.image_shape == tuple(manifest["image_shape"])
    assert meta["dataset"] == "digits" and meta["run_id"] == out["run_id"]
    assert meta["epoch"] == out["best_epoch"] and meta["test_bpd"] == pytest.approx(out["test_bpd"])
    assert len(meta["manifest_fingerprint"]) == 64

    client = MlflowClient(mlflow_uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["nfpipe.manifest_fingerprint"] == meta["manifest_fingerprint"]
    assert run.data.tags["nfpipe.stage"] == "train" and "mlflow.user" in run.data.tags
    (dataset,) = run.inputs.dataset_inputs  # the manifest as the run's dataset input
    assert meta["manifest_fingerprint"].startswith(dataset.dataset.digest)
    assert run.data.params["train.model.name"] == family
    assert run.data.params["train.model.n_bins"] == "17"
    # test bpd improves over epoch 0 (the initialised model), once per epoch
    test_bpd = client.get_metric_history(out["run_id"], "bpd/test")
    assert [m.step for m in test_bpd] == [0, 1, 2]
    assert test_bpd[-1].value < test_bpd[0].value
    for key in ("bpd/train", "epoch/images_per_s", "epoch/lr", "epoch/grad_norm",
                "epoch/skipped_steps"):
        assert _steps(client, out["run_id"], key) == [1, 2], key
    assert _steps(client, out["run_id"], "step/train_bpd") == list(range(5, 45, 5))
    # DDP: both ranks held bit-identical weights after the first step
    digests = run.data.tags["nfpipe.ddp.step1_digests"].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]

    images = logged_images(client, out["run_id"])  # one key per temperature, step = epoch
    assert images == {("samples/T0.7", 1), ("samples/T1", 1), ("samples/T0.7", 2),
                      ("samples/T1", 2)}
    bundle = {Path(a.path).name for a in client.list_artifacts(out["run_id"], "model_bundle")}
    assert {"model.safetensors", "model_config.json", "meta.json"} <= bundle

    # the importance-weighted bound (train.eval_k = 4 draws) is tighter than k = 1
    assert out["test_bpd_k4"] <= out["test_bpd"] + 1e-6
