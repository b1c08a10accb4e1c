"""A real `mlflow server` with basic auth: credentials reach it through
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the README's way), never in the URI."""

from __future__ import annotations

import subprocess

import pytest
from deploy_helpers import Server
from helpers import REPO, VENV_BIN, subprocess_env

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-admin-pw"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` on a free loopback port, admin's password set."""
    tmp = tmp_path_factory.mktemp("auth-server")
    server = Server([str(VENV_BIN / "mlflow"), "server", "--app-name", "basic-auth",
                     "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                     "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
                    cwd=tmp, log=tmp / "server.log", MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
                    MLFLOW_FLASK_SERVER_SECRET_KEY="test-only-secret")
    try:
        server.wait_ready("/health", timeout_s=90)
        yield server
    finally:
        server.stop()


def _models_list(url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "nfpipe"), "models", "list", "--tracking-uri", url],
                          cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=120)


def test_credentials_from_the_environment_reach_an_authenticating_server(auth_server):
    allowed = _models_list(auth_server.url, MLFLOW_TRACKING_USERNAME="admin",
                           MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "no registered models" in allowed.stdout

    refused = _models_list(auth_server.url)  # the same server without them: refused, said
    assert refused.returncode != 0
    assert PASSWORD not in refused.stdout + refused.stderr + allowed.stdout + allowed.stderr
