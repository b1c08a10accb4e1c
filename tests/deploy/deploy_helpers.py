"""Helpers of the deploy tests: throwaway registries and server processes."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
from helpers import REPO, VENV_BIN, free_port, stop_process_group, subprocess_env

from tracking import use_store as use_tracking  # noqa: F401 - the tests' name for it

MODEL_NAME = "digits-glow"
DIRECTED = "digits-glow-directions"  # the session bundle with its class directions
README_SERVER = "http://127.0.0.1:5001"  # where README's request lines send them


def readme_bash_block(marker: str) -> str:
    """The one bash block of README.md that holds `marker`."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, found
    return found[0]


SAMPLE_BLOCK = '"mode": "sample"'  # README's request lines: sample, then score
LATENT_BLOCK = '"mode": "encode"'  # README's latent request lines, after those


def readme_sample_request() -> bytes:
    """The JSON body of README's sample request (its `curl -d '...'`)."""
    bodies = re.findall(r"-d '(\{.*?\})'", readme_bash_block(SAMPLE_BLOCK))
    assert len(bodies) == 1, bodies
    return bodies[0].encode()


def run_readme_requests(url: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """README's request lines run by bash as written in `folder` (given a `.venv`), sent to
    `url` instead of README_SERVER: (the samples, the bits/dim of scoring them back)."""
    block = readme_bash_block(SAMPLE_BLOCK)
    assert README_SERVER in block
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".venv").symlink_to(VENV_BIN.parent)
    done = _run_block(block, url, folder)
    answer = folder / "samples.json"
    assert done.returncode == 0, (done.stderr[-3000:], answer.exists() and answer.read_text())
    sampled = json.loads(answer.read_text())
    scored = json.loads(done.stdout)
    assert "predictions" in sampled and "predictions" in scored, (sampled, scored)
    return np.asarray(sampled["predictions"]), np.asarray(scored["predictions"])


def run_readme_latent_requests(url: str, folder: Path) -> dict[str, np.ndarray]:
    """README's latent request lines, run by bash as written in `folder` after
    `run_readme_requests` (they read its samples.json), sent to `url`: each answer's
    predictions, by the file it was written to."""
    block = readme_bash_block(LATENT_BLOCK)
    assert README_SERVER in block
    done = _run_block(block, url, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = {}
    for name in ("latents", "decoded", "strip"):
        answer = json.loads((folder / f"{name}.json").read_text())
        assert "predictions" in answer, (name, answer)
        answers[name] = np.asarray(answer["predictions"])
    return answers


def _run_block(block: str, url: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", block.replace(README_SERVER, url)], cwd=folder,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


def make_registry(directory: Path) -> tuple[str, str]:
    """(tracking URI, experiment id) of a fresh SQLite store with artifacts under `directory`."""
    import mlflow

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("deploy-tests",
                                          artifact_location=(directory / "art").as_uri())
    return uri, experiment


def new_run(uri: str, experiment: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).create_run(experiment).info.run_id


class Server:
    """A server process group on 127.0.0.1:port; `stop()` always kills the whole group."""

    def __init__(self, args: list[str], cwd: Path, log: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [arg.replace("{port}", str(self.port)) for arg in args]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=cwd, env=subprocess_env(PYTHONPATH=str(REPO), **env),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.url + path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"{self.url}{path} not ready after {timeout_s}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        stop_process_group(self.proc)
