"""Send a whole pipeline to a Ray cluster as a Ray job, and follow, inspect or stop it.

What runs on the cluster is exactly the config `nfpipe config show` resolves here: it travels in
the job's environment as JSON, with `ray.address` set to `auto` (the job runs on the cluster).
The project code travels as the job's working_dir, without data, checkpoints or MLflow stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.console import Console

from pipeline.config import PipelineConfig

RESOLVED_CONFIG_ENV = "NFPIPE_RESOLVED_CONFIG"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [
    ".venv", ".git", ".nfpipe", "data", "mlflow.db", "mlartifacts", "mlruns", "*.tar",
    "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "benchmarks",
]
FINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


def register_commands(sub: argparse._SubParsersAction) -> None:
    from pipeline.cli import add_config_arguments

    submit = sub.add_parser("submit", help="send the pipeline to a Ray cluster as a job")
    add_config_arguments(submit)
    _add_address(submit)
    submit.add_argument("--stages", default=None, help="comma-separated stages to run")
    submit.add_argument("--wait", action="store_true", help="follow the logs until it ends")
    submit.set_defaults(func=cmd_submit)
    for name, func, text in (
        ("status", cmd_status, "state, current stage and latest metrics of a job"),
        ("logs", cmd_logs, "print (or -f follow) a job's logs"),
        ("stop", cmd_stop, "stop a running job"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("job_id")
        _add_address(command)
        if name == "logs":
            command.add_argument("-f", "--follow", action="store_true")
        command.set_defaults(func=func)


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
        help=f"Ray dashboard address (default: $RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})",
    )


def _client(address: str):
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


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.cli import config_from_args

    cfg = config_from_args(args)
    entrypoint, runtime_env = job_payload(cfg, args.stages)
    client = _client(args.address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata={"nfpipe.pipeline": cfg.name, "nfpipe.profile": cfg.profile or ""},
    )
    print(job_id)
    if not args.wait:
        return 0
    _follow(client, job_id)
    status = _wait_final(client, job_id)
    Console(stderr=True).print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args.address)
    info = client.get_job_info(args.job_id)
    logs = client.get_job_logs(args.job_id)
    summary = {
        "job_id": args.job_id,
        "status": str(info.status.value if hasattr(info.status, "value") else info.status),
        "message": info.message,
        "stage": current_stage(logs),
        "latest_metrics": latest_metrics(logs),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if args.follow:
        _follow(client, args.job_id)
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client = _client(args.address)
    stopped = client.stop_job(args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0


def _follow(client, job_id: str) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def _wait_final(client, job_id: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in FINAL_STATES or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


STAGE_LINE = re.compile(r"[▶✓✗↷]\s+(\w+)\s+(running|done|failed|up to date)")
METRIC = re.compile(r"\b(epoch|step|train_bpd|test_bpd|images_per_s|bpd)[=: ]+([-\d.e]+)")


def current_stage(logs: str) -> str | None:
    """The last stage the runner announced in the logs, with its state."""
    matches = STAGE_LINE.findall(logs)
    return f"{matches[-1][0]} ({matches[-1][1]})" if matches else None


def latest_metrics(logs: str) -> dict[str, float]:
    """Metrics of the last log line that carries any (epoch lines of the train stage)."""
    for line in reversed(logs.splitlines()):
        found = METRIC.findall(line)
        if found:
            return {name: float(value) for name, value in found}
    return {}
