"""Helpers of the deploy tests: throwaway registries and server processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from helpers import REPO, free_port, stop_process_group, subprocess_env

from tracking import use_store as use_tracking  # noqa: F401 - the tests' name for it

MODEL_NAME = "digits-glow"


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
