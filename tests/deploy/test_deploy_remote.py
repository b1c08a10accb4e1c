"""The whole register -> promote -> pull cycle against a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from deploy_helpers import Server, use_tracking
from helpers import VENV_BIN

import tracking
from deploy.config import PromoteConfig
from deploy.registry import (
    Candidate,
    promote,
    register_and_promote,
    register_version,
)
from flows.scoring import score_levels
from pipeline import cli

pytestmark = pytest.mark.slow

NAME = "remote-glow"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server`: SQLite backend and proxied artifacts in tmp, a free loopback port."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    server = Server([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
                     f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination",
                     str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", "{port}",
                     "--workers", "1"], cwd=tmp, log=tmp / "server.log")
    try:
        server.wait_ready("/health", timeout_s=90)
        yield server
    finally:
        server.stop()


def test_register_promote_pull_over_http(tracking_server, bundle, model, test_images,
                                         manifest, capsys):
    uri = tracking_server.url
    client = tracking.client(uri)
    experiment = client.create_experiment("remote")  # artifacts go through the server
    cfg = PromoteConfig(margin=0.01, max_batch=64, max_samples=8)
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]

    first, version_uri = register_and_promote(
        uri, NAME, bundle, Candidate(3.0, 3.0, "digits", manifest.fingerprint, runs[0], "glow"),
        cfg)
    assert first.promoted and first.champion_version == "1"
    assert version_uri == f"models:/{NAME}/1"
    # a second pipeline's worse model (the same logged files, registered from its own run)
    logged = client.get_model_version(NAME, "1")
    second = register_version(client, NAME, logged.source, Candidate(
        3.2, 3.2, "digits", manifest.fingerprint, runs[1], "glow"), logged.source.split("/")[-1])
    worse = promote(client, NAME, second.version, cfg.margin)
    assert not worse.promoted and worse.champion_version == "1"

    capsys.readouterr()  # MLflow prints "View run … at …" links when a run ends
    assert cli.main(["models", "list", "--tracking-uri", uri, "--name", NAME, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["aliases"], r["promotion"]) for r in rows] == [
        (2, ["challenger"], "kept"), (1, ["champion"], "promoted")]
    assert rows[0]["run_id"] == runs[1]

    import mlflow

    use_tracking(uri)
    pulled = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert pulled.metadata.run_id == runs[0]  # logged into the evaluated training run
    served = pulled.predict(test_images, params={"seed": 11})
    expected = score_levels(model, test_images, generator=11)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_deploy_commands_take_the_server_from_the_environment(tracking_server, monkeypatch,
                                                               tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "grid.png"
    assert cli.main(["deploy", "sample", "--model", NAME, "--n", "4", "--out", str(out)]) == 0
    assert out.exists()
    assert "v1" in capsys.readouterr().out
    assert sys.modules["mlflow"].get_tracking_uri() == tracking_server.url
