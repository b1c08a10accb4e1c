"""The README's `mlflow server` line, as documented: other machines call it by the name
`mlflow.internal`, and MLflow 3 refuses a Host header it was not told about (403)."""

from __future__ import annotations

import re
import shlex

import pytest
import requests
from deploy_helpers import Server
from helpers import REPO, VENV_BIN

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _documented_server_words() -> list[str]:
    """The words of the README's `mlflow server` command (backslash-continued lines)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("mlflow server "))
    return shlex.split(line)


def _start(tmp_path, allowed_hosts: str | None) -> Server:
    tmp_path.mkdir()
    extra = ["--allowed-hosts", allowed_hosts] if allowed_hosts is not None else []
    server = Server([str(VENV_BIN / "mlflow"), "server",
                     "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--artifacts-destination", str(tmp_path / "art"),
                     "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", *extra],
                    cwd=tmp_path, log=tmp_path / f"server-{bool(extra)}.log")
    server.wait_ready("/health", timeout_s=120)
    return server


def _status(server: Server, host: str) -> int:
    return requests.get(server.url + SEARCH, headers={"Host": host}, timeout=10).status_code


def test_the_documented_allowed_hosts_let_mlflow_internal_in(tmp_path):
    words = _documented_server_words()
    assert words[words.index("--host") + 1] == "0.0.0.0"
    allowed = words[words.index("--allowed-hosts") + 1]
    uses = set(re.findall(r"tracking_uri=http://([\w.:-]+)", (REPO / "README.md").read_text()))
    assert uses == {"mlflow.internal:5000"}  # the name the README's other commands call it by

    server = _start(tmp_path / "documented", allowed)
    try:
        assert _status(server, "mlflow.internal:5000") == 200, server.tail()
        assert _status(server, "mlflow.internal") == 200
        assert _status(server, "evil.example") == 403
    finally:
        server.stop()

    bare = _start(tmp_path / "bare", None)  # the line as it was: the test can fail
    try:
        assert _status(bare, "mlflow.internal:5000") == 403
    finally:
        bare.stop()
