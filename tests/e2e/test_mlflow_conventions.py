"""What the MLflow UI shows of a training run, read back through the MLflow client
from the session's tiny default pipeline run (the `quickstart` fixture): the manifest as the
run's dataset input, a sample grid per temperature at each evaluation step (enlarged to
>= 256 px), system metrics, the bpd curves under `bpd/`, `nfpipe.*` tags and the user and
source of the run. (tests/cluster/test_multinode_s3.py logs the same kind of run to a real
`mlflow server` over HTTP.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers import logged_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(quickstart):
    workdir, first = quickstart
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    records = workdir / ".nfpipe" / "records"
    record = json.loads((records / "train.json").read_text())
    manifest = json.loads(Path(json.loads(
        (records / "data_prep.json").read_text())["outputs"]["manifest"]).read_text())
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return client, client.get_run(record["outputs"]["run_id"]), record, manifest, workdir


def test_run_has_the_manifest_as_dataset_input(trained):
    client, run, record, manifest, tmp = trained
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    fingerprint = run.data.tags["nfpipe.manifest_fingerprint"]
    assert len(fingerprint) == 64 and fingerprint.startswith(dataset.digest)
    assert dataset.name == "digits-8x8-5bit"
    profile = json.loads(dataset.profile)
    assert profile["fingerprint"] == fingerprint
    assert profile["splits"] == {name: split["count"] for name, split
                                 in manifest["splits"].items()}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_sample_grids_are_images_at_each_evaluation_step(trained):
    client, run, *_ = trained
    assert logged_images(client, run.info.run_id) == {
        (f"samples/T{t}", epoch) for t in ("0.7", "1") for epoch in (1, 2)
    }
    from PIL import Image

    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "images")
            if a.path.endswith(".png")]
    local = client.download_artifacts(run.info.run_id, pngs[0])
    width, height = Image.open(io.BytesIO(Path(local).read_bytes())).size
    assert min(width, height) >= 256  # a 16-sample grid of 8x8 digits, enlarged


def test_system_metrics_and_metric_names_and_tags(trained):
    client, run, *_ = trained
    metrics = set(run.data.metrics)
    assert any(name.startswith("system/cpu_utilization_percentage") for name in metrics)
    assert {"bpd/val", "bpd/train", "epoch/lr", "step/train_bpd"} <= metrics
    curves = sorted(name for name in metrics if name.startswith("bpd/"))
    assert sorted(metrics)[:len(curves)] == curves  # the bpd curves sort first
    assert [m.step for m in client.get_metric_history(run.info.run_id, "bpd/val")] == [0, 1, 2]
    tags = run.data.tags
    assert tags["nfpipe.stage"] == "train" and tags["nfpipe.dataset"] == "digits"
    assert not {"stage", "dataset", "pipeline", "model"} & set(tags)  # no bare tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"].endswith("nfpipe")
    assert tags["mlflow.source.type"] == "LOCAL"
