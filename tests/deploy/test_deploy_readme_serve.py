"""The README's `mlflow models serve` block, run as written, as from a fresh clone.

The block is taken from README.md and run by bash in a folder laid out like the project after
`make run`: `.venv` (this test's virtualenv), `mlflow.db` holding `quickstart-realnvp@champion`.
PATH does not hold the venv (nothing activated), no PYTHONPATH. Only the port is changed to a
free one. The server must answer `/invocations` with the bpd `nfpipe deploy score` gives, and
README's request lines (the one form both servers take) must run against it as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
import requests
from deploy_helpers import readme_bash_block, run_readme_requests, use_tracking
from helpers import VENV_BIN, free_port, stop_process_group
from PIL import Image

from pipeline import cli

pytestmark = pytest.mark.slow

NAME = "quickstart-realnvp"
README_PORT = "--port 5002"


def readme_block() -> str:
    """The bash block of README.md that runs `mlflow models serve`."""
    return readme_bash_block("mlflow models serve")


@pytest.fixture(scope="module")
def project(tmp_path_factory, bundle):
    """A folder like the project after `make run`: .venv and mlflow.db with the champion."""
    from deploy.config import PromoteConfig
    from deploy.registry import Candidate, register_and_promote

    folder = tmp_path_factory.mktemp("clone")
    (folder / ".venv").symlink_to(VENV_BIN.parent)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    import mlflow

    experiment = mlflow.MlflowClient(uri).create_experiment(
        "nfpipe", artifact_location=(folder / "mlartifacts").as_uri())
    run_id = mlflow.MlflowClient(uri).create_run(experiment).info.run_id
    register_and_promote(uri, NAME, bundle, Candidate(3.0, 3.0, "digits", "fp", run_id, "glow"),
                         PromoteConfig())
    return folder, uri


def fresh_shell_env() -> dict[str, str]:
    """This environment as a new shell in a fresh clone has it: no venv on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI",
                        "MLFLOW_REGISTRY_URI")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and os.path.realpath(p) != os.path.realpath(VENV_BIN))
    return env


def run_block(block: str, folder, log) -> tuple[subprocess.Popen, int]:
    assert README_PORT in block
    port = free_port()
    script = block.replace(README_PORT, f"--port {port}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", script], cwd=folder, env=fresh_shell_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port


def test_readme_mlflow_models_serve_gives_the_bpd_of_deploy_score(project, test_images,
                                                                  tmp_path, capsys):
    """Test images posted, and README's request lines run as written (only the port changed):
    the bpd `nfpipe deploy score` gives, for the test images and for README's samples."""
    folder, uri = project
    proc, port = run_block(readme_block(), folder, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        served = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                               json={"inputs": test_images.tolist(), "params": {"seed": 3}})
        samples, scored_back = run_readme_requests(f"http://127.0.0.1:{port}",
                                                   tmp_path / "requests")
    finally:
        stop_process_group(proc)
    assert served.status_code == 200, served.text
    assert samples.shape == (4, 1, 8, 8) and samples.max() < 17

    pngs = []
    for i, image in enumerate(test_images):
        pngs.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[0]).save(pngs[-1])
    assert cli.main(["deploy", "score", "--tracking-uri", uri, "--model", f"{NAME}@champion",
                     "--seed", "3", "--json", *pngs]) == 0
    scored = json.loads(capsys.readouterr().out)["scores"]
    np.testing.assert_allclose(served.json()["predictions"], [row["bpd"] for row in scored],
                               rtol=0, atol=1e-6)
    # README's samples, scored back over HTTP: the bpd `deploy score` gives their .npy
    np.save(tmp_path / "samples.npy", samples.astype(np.uint8))
    assert cli.main(["deploy", "score", "--tracking-uri", uri, "--model", f"{NAME}@champion",
                     "--seed", "0", "--json", str(tmp_path / "samples.npy")]) == 0
    scored = json.loads(capsys.readouterr().out)["scores"]
    np.testing.assert_allclose(scored_back, [row["bpd"] for row in scored], rtol=0, atol=1e-6)


def test_without_the_activation_line_uvicorn_is_not_found(project, tmp_path):
    """The cause the README's first line fixes: MLflow runs `uvicorn` found on PATH."""
    folder, _ = project
    command = readme_block().splitlines()[-1]
    assert command.startswith("mlflow models serve")
    proc, _ = run_block(f"exec .venv/bin/{command}", folder, tmp_path / "serve.log")
    try:
        proc.wait(120)
    finally:
        stop_process_group(proc)
    assert proc.returncode != 0
    assert "uvicorn: not found" in (tmp_path / "serve.log").read_text()


@pytest.fixture(autouse=True)
def _back_to_the_session_registry(registry):
    yield
    use_tracking(registry[0])
