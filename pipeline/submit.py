"""Send a whole pipeline to a Ray cluster as a Ray job, and follow, inspect or stop it.

What runs on the cluster is exactly the config `nfpipe config show` resolves here: it travels in
the job's environment as JSON, with `ray.address` set to `auto` (the job runs on the cluster).
The project code travels as the job's working_dir, without data, checkpoints or MLflow stores.

Ray runs the job inside a temporary copy of that working_dir and deletes it when its session
ends, so every location a job writes must be durable: an absolute path on the cluster, an
object-store URL, or an MLflow server. Relative ones are refused before submission. The
entrypoint holds only quoted, validated arguments; everything else travels in the environment.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Mapping
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
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's client reads them first
# a job's runtime_env is public to whoever reads the dashboard (`ray job list`, /api/jobs/) and
# written to the head's logs: names like these never travel with `--env`
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


def job_client(address: str):
    """A job client of the dashboard at `address`. Ray's client takes $RAY_API_SERVER_ADDRESS or
    $RAY_ADDRESS over its argument; here the address given wins (the CLI's default for
    --address is already $RAY_API_SERVER_ADDRESS)."""
    from ray.job_submission import JobSubmissionClient

    use_local_auth_token()
    hidden = {name: os.environ.pop(name) for name in ADDRESS_ENVS if name in os.environ}
    try:
        return JobSubmissionClient(address)
    finally:
        os.environ.update(hidden)


def use_local_auth_token() -> None:
    """Send this machine's Ray auth token when there is one: clusters started here enable token
    auth once `~/.ray/auth_token` exists, but Ray's clients send it only when told to."""
    from pipeline.ray_session import use_token_auth

    use_token_auth(new_cluster=False)


def job_payload(cfg: PipelineConfig, stages: list[str] | None,
                forward_env: Mapping[str, str] | None = None) -> tuple[str, dict]:
    """The entrypoint and runtime_env that run `cfg` on the cluster.

    `stages` must already be validated (`parse_stages`); `forward_env` are the environment
    variables the user named with `--env` (their values go to the job, never to the output).
    """
    check_durable(cfg)
    on_cluster = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "auto"})})
    command = ["python", "-m", "pipeline.cli", "run", "--resolved-env", RESOLVED_CONFIG_ENV]
    if stages:
        command += ["--stages", ",".join(stages)]
    runtime_env = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES,
        "env_vars": {
            **(forward_env or {}),
            RESOLVED_CONFIG_ENV: on_cluster.model_dump_json(),
            "PYTHONUNBUFFERED": "1",
        },
    }
    return shlex.join(command), runtime_env


def parse_stages(text: str | None) -> list[str] | None:
    """`a,b` -> ['a', 'b'], every name a known stage; None when not given."""
    from pipeline.config import ALL_STAGES, ConfigError
    from train.typed import suggest

    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise ConfigError("--stages is empty: name at least one stage "
                          f"({', '.join(ALL_STAGES)})")
    for name in names:
        if name not in ALL_STAGES:
            raise ConfigError(f"--stages: unknown stage {name!r}{suggest(name, ALL_STAGES)}; "
                              f"stages: {', '.join(ALL_STAGES)}")
    return names


def forwarded_env(names: list[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The values of the variables named with `--env`: an unset one is an error, and so is a
    secret-looking one (Ray cannot carry a value privately)."""
    from pipeline.config import ConfigError

    secret = [name for name in names if SECRET_NAME.search(name)]
    if secret:
        raise ConfigError(
            f"--env {secret[0]}: looks like a secret, and Ray shows a job's environment to "
            "anyone who can read its dashboard (`ray job list`) and writes it to the head's "
            "logs; give the cluster its own credentials instead: an instance or pod identity "
            "(IAM role, workload identity), or a secret mounted on every node or exported in "
            "the environment of `ray start` there (Ray's workers inherit it)"
        )
    missing = [name for name in names if name not in environ]
    if missing:
        raise ConfigError(f"--env {missing[0]}: not set in this shell; export it first")
    return {name: environ[name] for name in names}


def durable_locations(cfg: PipelineConfig) -> dict[str, str]:
    """Config key -> where the job's results go on the cluster."""
    from tracking.store import sqlite_folder

    places = {"workdir": str(cfg.workdir), "data_prep.output_root": cfg.data_prep.output_root,
              "train.storage_path": cfg.train.storage_path or f"{cfg.workdir}/ray_results",
              "mlflow.tracking_uri": cfg.mlflow.tracking_uri}
    if sqlite_folder(cfg.mlflow.tracking_uri) is not None:
        places["mlflow.artifact_root"] = cfg.mlflow.artifact_root
    return places


def check_durable(cfg: PipelineConfig) -> None:
    """Refuse relative locations: on the cluster they would land in Ray's temporary copy of the
    working directory, which Ray deletes when the job's session ends."""
    from pipeline.config import ConfigError

    given = {**durable_locations(cfg), "train.storage_path": cfg.train.storage_path,
             "data_prep.source": cfg.data_prep.source}
    _check_no_credentials(given)
    relative = [key for key, place in given.items() if place is not None and _is_relative(place)]
    if relative:
        lines = [f"  {key}={given[key]}" for key in relative]
        raise ConfigError(
            "a submitted job runs in Ray's temporary copy of the working directory, deleted "
            "when the job ends; these locations are relative and would be lost there:\n"
            + "\n".join(lines) + "\nset each to an absolute path that exists on the cluster, "
            "an object-store URL (--set data_prep.output_root=s3://bucket/shards, "
            "--set train.storage_path=s3://bucket/runs) or, for MLflow, a server "
            "(--set mlflow.tracking_uri=http://HOST:5000)"
        )


def _check_no_credentials(places: Mapping[str, str | None]) -> None:
    """Refuse a URL with a user or password: the config travels in the job's public
    runtime_env."""
    from pipeline.config import ConfigError
    from tracking.store import mask_url_credentials

    for key, place in places.items():
        if place is not None and mask_url_credentials(str(place)) != str(place):
            raise ConfigError(
                f"{key}={mask_url_credentials(str(place))}: a submitted job's config is shown "
                "to anyone who can read the Ray dashboard; leave credentials out of URLs and "
                "give them to the cluster's nodes instead (MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in the environment of `ray start`)"
            )


def _is_relative(place: str) -> bool:
    from data_prep.storage import is_remote
    from tracking.store import SQLITE

    if place.startswith(SQLITE):
        return not place[len(SQLITE):].startswith("/")
    return not is_remote(place) and not place.startswith(("/", "file:///"))


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
METRIC = re.compile(r"\b(epoch|step|train_bpd|val_bpd|test_bpd|train|val|test|images_per_s|bpd)"
                    r"[=: ]+(-?\d[\d.]*(?:e-?\d+)?)")
# the train stage's epoch lines (val now, test in logs of older runs)
_METRIC_NAMES = {"train": "train_bpd", "val": "val_bpd", "test": "test_bpd"}


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
