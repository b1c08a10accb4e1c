"""Send a whole pipeline to a Ray cluster as a Ray job, and follow, inspect or stop it.

What runs on the cluster is exactly the config `nfpipe config show` resolves here: it travels in
the job's environment as JSON, with `ray.address` set to `auto` (the job runs on the cluster).
The project code travels as the job's working_dir, without data, checkpoints or MLflow stores.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config models load only when a command runs (a fast --help)
    from pipeline.config import PipelineConfig

RESOLVED_CONFIG_ENV = "NFPIPE_RESOLVED_CONFIG"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [
    ".venv", ".git", ".nfpipe", "data", "mlflow.db", "mlartifacts", "mlruns", "*.tar",
    "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "benchmarks",
]
FINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0  # a freshly started head accepts jobs only once its job agent is up


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    use_local_auth_token()
    return JobSubmissionClient(address)


def use_local_auth_token() -> None:
    """Send this machine's Ray auth token when there is one.

    Clusters started here enable token auth once `~/.ray/auth_token` exists (Ray >= 2.5x), but
    Ray's clients only send the token when RAY_AUTH_MODE=token; an explicit setting wins.
    """
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" in os.environ or not (
        "RAY_AUTH_TOKEN" in os.environ or token_file.exists()
    ):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray caches the mode at import: refresh it, as ray.init does


def job_payload(cfg: PipelineConfig, stages: str | None) -> tuple[str, dict]:
    """The entrypoint and runtime_env that run `cfg` on the cluster."""
    on_cluster = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "auto"})})
    entrypoint = f"python -m pipeline.cli run --resolved-env {RESOLVED_CONFIG_ENV}"
    if stages:
        entrypoint += f" --stages {stages}"
    runtime_env = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES,
        "env_vars": {
            RESOLVED_CONFIG_ENV: on_cluster.model_dump_json(),
            "PYTHONUNBUFFERED": "1",
        },
    }
    return entrypoint, runtime_env


def submit_job(client, entrypoint: str, runtime_env: dict, metadata: dict,
               wait_s: float = AGENT_WAIT_S) -> str:
    """`client.submit_job`, retried while the head says its job agent is not up yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                     metadata=metadata)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def follow_logs(client, job_id: str) -> None:
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def wait_final(client, job_id: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in FINAL_STATES or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


STAGE_LINE = re.compile(r"[▶✓✗↷]\s+(\w+)\s+(running|done|failed|up to date)")
METRIC = re.compile(r"\b(epoch|step|train_bpd|test_bpd|train|test|images_per_s|bpd)[=: ]+"
                    r"(-?\d[\d.]*(?:e-?\d+)?)")
_METRIC_NAMES = {"train": "train_bpd", "test": "test_bpd"}  # the train stage's epoch lines


def current_stage(logs: str) -> str | None:
    """The last stage the runner announced in the logs, with its state."""
    matches = STAGE_LINE.findall(logs)
    return f"{matches[-1][0]} ({matches[-1][1]})" if matches else None


def latest_metrics(logs: str) -> dict[str, float]:
    """Metrics of the last log line that carries any (epoch lines of the train stage)."""
    for line in reversed(logs.splitlines()):
        found = METRIC.findall(line)
        if found:
            return {_METRIC_NAMES.get(name, name): float(value) for name, value in found}
    return {}
