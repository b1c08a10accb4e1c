"""The "next" block's commands, run as printed from another folder, address the run's own
store, pipeline file and profile (a real SQLite registry holding a champion)."""

from __future__ import annotations

import shlex

import pytest
import requests
from deploy_helpers import MODEL_NAME, Server
from rich.console import Console

from pipeline.config import load_config
from pipeline.next_steps import Invocation, next_steps, print_next_steps
from pipeline.records import StageRecord, write_record

pytestmark = pytest.mark.slow

# how each printed command is started on a free port, and what proves it reads the run's store
READY = {"serve it": "/health", "MLflow UI": "/health"}


def _champion_seen(label: str, server: Server) -> str:
    if label == "serve it":
        return str(requests.get(server.url + "/health", timeout=5).json()["version"])
    answer = requests.get(server.url + "/api/2.0/mlflow/registered-models/alias",
                          params={"name": MODEL_NAME, "alias": "champion"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"]["version"])


def test_every_printed_command_addresses_the_runs_store(registry, champion, tmp_path,
                                                        monkeypatch):
    """As after `nfpipe run conf/pipe.yaml --profile small --set mlflow.tracking_uri=...`,
    with the commands run from a folder whose own pipeline.yaml (no profile `small`) and
    ./mlflow.db (no model) would be used by a command that did not carry them."""
    pipeline = tmp_path / "conf" / "pipe.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text("profiles:\n  small:\n    deploy:\n      request_timeout_s: 30\n")
    sets = (f"mlflow.tracking_uri={registry[0]}", f"workdir={tmp_path / 'work'}")
    cfg = load_config(pipeline, "small", sets)
    write_record(tmp_path / "work", StageRecord(
        "promote", "ok", "fp", "cfg", {},
        {"model_name": MODEL_NAME, "version": champion.version,
         "champion_version": champion.version, "promoted": True}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pipeline.yaml").write_text("name: decoy\n")
    monkeypatch.chdir(elsewhere)

    lines = dict(next_steps(cfg, {"promote"}, Invocation(pipeline, sets)))
    console = Console(record=True, width=1000)
    print_next_steps(cfg, console, (), Invocation(pipeline, sets))
    printed = console.export_text()
    assert set(READY) <= set(lines)
    for label, path in READY.items():
        assert lines[label] in printed
        server = Server([*shlex.split(lines[label]), "--port", "{port}"], cwd=elsewhere,
                        log=tmp_path / f"{label}.log")
        try:
            server.wait_ready(path, timeout_s=120)
            assert _champion_seen(label, server) == str(champion.version), label
        finally:
            server.stop()
    assert "--profile small" in lines["serve it"] and str(pipeline) in lines["serve it"]
