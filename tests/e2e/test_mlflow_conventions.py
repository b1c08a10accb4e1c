"""What the MLflow UI shows of a training run (issue 14), read back through the MLflow client
from a real `mlflow server` on 127.0.0.1 after a tiny `nfpipe run --stages train`: the
manifest as the run's dataset input, a sample grid per temperature at each evaluation step
(enlarged to >= 256 px), system metrics, the bpd curves under `bpd/`, `nfpipe.*` tags and the
user and source of the run."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, VENV_BIN, free_port, logged_images, stop_process_group, subprocess_env
from helpers import wait_until as wait

pytestmark = pytest.mark.slow

TINY_TRAIN = {
    "train.epochs": 2,
    "train.eval_every": 1,
    "train.model.levels": 1,
    "train.model.steps": 1,
    "train.model.hidden": 8,
    "train.model.res_blocks": 1,
    "train.optim.warmup_steps": 10,
    "train.sample_n": 16,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        wait(lambda: requests.get(url + "/health", timeout=2).ok, 90, "mlflow server")
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-on-server")
    sets = [arg for key, value in {**TINY_TRAIN, "mlflow.tracking_uri": server}.items()
            for arg in ("--set", f"{key}={value}")]
    # sample every second, so a run of a few seconds has system metrics
    env = subprocess_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
                         PYTHONPATH=str(REPO))
    result = subprocess.run([str(VENV_BIN / "nfpipe"), "run", str(REPO / "pipeline.yaml"),
                             "--stages", "train", *sets], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads((tmp / ".nfpipe" / "records" / "train.json").read_text())
    manifest = json.loads(Path(json.loads(
        (tmp / ".nfpipe" / "records" / "data_prep.json").read_text())["outputs"]["manifest"]
    ).read_text())
    from mlflow import MlflowClient

    client = MlflowClient(server)
    return client, client.get_run(record["outputs"]["run_id"]), record, manifest, tmp


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
    assert {"bpd/test", "bpd/train", "epoch/lr", "step/train_bpd"} <= metrics
    assert sorted(metrics)[:2] == ["bpd/test", "bpd/train"]  # the curves sort first
    assert [m.step for m in client.get_metric_history(run.info.run_id, "bpd/test")] == [0, 1, 2]
    tags = run.data.tags
    assert tags["nfpipe.stage"] == "train" and tags["nfpipe.dataset"] == "digits"
    assert not {"stage", "dataset", "pipeline", "model"} & set(tags)  # no bare tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"].endswith("nfpipe")
    assert tags["mlflow.source.type"] == "LOCAL"
