"""Helpers shared by tests: free ports, real Ray nodes as processes, waiting for readiness."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
# Credentials of the test's S3 server: distinctive, so a test can prove none of them leaks into
# MLflow, records or logs.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "NFPIPETESTKEYID7Q2X",
    "AWS_SECRET_ACCESS_KEY": "nfpipe-test-secret-3c9f1e7d",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def git_head() -> str:
    """The commit checked out in this repository."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def stop_process_group(proc: subprocess.Popen, term_wait_s: float = 3) -> None:
    """SIGTERM the process group started with start_new_session=True, then SIGKILL it."""
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait_s)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def cluster_local_settings(tmp: Path) -> list[str]:
    """--set flags that keep a pipeline's state (work dir, shards, MLflow) inside `tmp`."""
    return [
        "--set", f"workdir={tmp / 'work'}",
        "--set", f"data_prep.output_root={tmp / 'shards'}",
        "--set", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "--set", f"mlflow.artifact_root={tmp / 'artifacts'}",
    ]


class RayNode:
    """One `ray start --block` process group (a head or a worker node) on 127.0.0.1."""

    def __init__(self, args: list[str], wrapper: list[str] | None = None, cwd: Path | None = None):
        command = [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", *args]
        self.proc = subprocess.Popen(
            [*(wrapper or []), *command],
            cwd=cwd,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        stop_process_group(self.proc, term_wait_s=5)


def _agent_port() -> list[str]:
    """A free port for a node's dashboard agent (jobs go through the head's): Ray's fixed
    default, 52365, is taken by whichever Ray on this machine started first (the session's
    `ray_local`, a pipeline's embedded Ray, a cluster of the other xdist worker)."""
    return [f"--dashboard-agent-listen-port={free_port()}"]


class LocalRayCluster:
    """A real multi-process Ray cluster on 127.0.0.1: a head with the dashboard (Jobs API)
    and optional worker nodes, each 1 CPU. `hide` mounts an empty tmpfs over a path for one
    worker node (its own mount namespace), to simulate storage that node cannot see."""

    def __init__(self, tmp: Path):
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[RayNode] = []
        self.tmp = tmp

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int = 1) -> None:
        self.nodes.append(
            RayNode(
                [
                    "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={num_cpus}", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}", *_agent_port(),
                ],
                cwd=self.tmp,
            )
        )
        from ray.job_submission import JobSubmissionClient

        from pipeline.submit import use_local_auth_token

        use_local_auth_token()  # Ray >= 2.5x enables token auth on clusters by default
        wait_until(lambda: JobSubmissionClient(self.dashboard) is not None, 120, "the Ray head")
        # the head's job agent comes up after the dashboard, on a busy machine much later
        # (submitting raises "No available agent" until then; wait_until retries on errors)
        wait_until(lambda: JobSubmissionClient(self.dashboard).submit_job(entrypoint="true"),
                   180, "the Ray head's job agent")

    def add_worker(self, num_cpus: int = 1, hide: Path | None = None) -> None:
        wrapper = None
        args = [
            f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            *_agent_port(),
        ]
        if hide is not None:
            hide.mkdir(parents=True, exist_ok=True)
            script = f'mount -t tmpfs nfpipe-hidden "{hide}" && exec "$@"'
            wrapper = ["unshare", "-m", "sh", "-c", script, "sh"]
        expected = len(self.nodes) + 1
        self.nodes.append(RayNode(args, wrapper=wrapper, cwd=self.tmp))
        wait_until(lambda: self.alive_nodes() >= expected, 120, f"{expected} alive Ray nodes")

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")])
        return len(nodes)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        # `ray start` left its address for ray.init() to find; it would point at a dead cluster
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


_IMAGE = re.compile(r"(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")


def logged_images(client, run_id: str) -> set[tuple[str, int]]:
    """(key, step) of every image logged with `log_image(key=..., step=...)` in the run."""
    found = set()
    for artifact in client.list_artifacts(run_id, "images"):
        match = _IMAGE.match(Path(artifact.path).name)
        if match:  # MLflow writes `/` in keys as `~`; compressed previews end in .webp
            found.add((match["key"].replace("~", "/"), int(match["step"])))
    return found


class S3Server:
    """moto's standalone S3 server in a thread, on the host and port of `endpoint`."""

    def __init__(self, endpoint: str):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        host, port = endpoint.removeprefix("http://").split(":")
        self.endpoint = endpoint
        self.server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
        self.server.start()

    def create_bucket(self, name: str) -> str:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.server.stop()


class GcsServer:
    """gcp-storage-emulator (a GCS JSON API server, in memory) as a process on the host and
    port of `endpoint`. A process, not a thread: pyarrow's GCS client can hold the GIL while it
    waits for a response (`open_input_file` does), and a server thread in the same interpreter
    then never answers."""

    def __init__(self, endpoint: str):
        import urllib.request

        host, port = endpoint.removeprefix("http://").split(":")
        self.endpoint = endpoint
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", host,
             "--port", port, "--in-memory", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: urllib.request.urlopen(endpoint, timeout=2).status == 200, 60,
                   "the GCS emulator")

    def create_bucket(self, name: str) -> str:
        import fsspec

        fsspec.filesystem("gs", skip_instance_cache=True).mkdir(name)
        return f"gs://{name}"

    def stop(self) -> None:
        stop_process_group(self.proc)
