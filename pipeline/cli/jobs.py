"""`nfpipe submit|status|logs|stop`: a pipeline as a Ray job (see `pipeline/submit.py`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console

from pipeline.cli.args import add_config_arguments, config_from_args, invocation_of
from pipeline.submit import (
    DEFAULT_ADDRESS,
    current_stage,
    durable_locations,
    follow_logs,
    forwarded_env,
    job_client,
    job_payload,
    latest_metrics,
    parse_stages,
    submit_job,
    wait_final,
)
from tracking.store import mask_url_credentials


def register_commands(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="send the pipeline to a Ray cluster as a job")
    add_config_arguments(submit)
    _add_address(submit)
    submit.add_argument("--stages", default=None, help="comma-separated stages to run")
    submit.add_argument(
        "--env", dest="env_names", action="append", default=[], metavar="NAME",
        help="forward this environment variable to the job (e.g. AWS_ENDPOINT_URL; "
        "repeatable; its value is never printed)",
    )
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


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    stages = parse_stages(args.stages)
    entrypoint, runtime_env = job_payload(cfg, stages, forwarded_env(args.env_names))
    client = job_client(args.address)
    _check_cluster_python(client)
    metadata = {"nfpipe.pipeline": cfg.name, "nfpipe.profile": cfg.profile or ""}
    job_id = submit_job(client, entrypoint, runtime_env, metadata)
    print(job_id)  # alone on stdout, for scripts; the rest goes to stderr
    _print_destinations(cfg, args.env_names)
    if not args.wait:
        return 0
    follow_logs(client, job_id)
    status = wait_final(client, job_id)
    err = Console(stderr=True, soft_wrap=True)
    err.print(f"job {job_id}: {status}")
    if status == "SUCCEEDED":
        from pipeline.next_steps import print_block, submitted_next_steps

        print_block(err, submitted_next_steps(cfg, stages or cfg.stages, invocation_of(args)))
    return 0 if status == "SUCCEEDED" else 1


def _check_cluster_python(client) -> None:
    """Refuse (ClusterPythonError, one line) a cluster whose Python lacks what the job imports;
    note versions that differ from requirements.lock."""
    from pipeline.cluster_python import check_cluster_python, pinned_versions, version_differences

    differ = version_differences(check_cluster_python(client), pinned_versions())
    if differ:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"note: the cluster's Python has {', '.join(differ)}; the job may behave differently")


def _print_destinations(cfg, env_names: list[str]) -> None:
    """Where the job's results will be (on the cluster), and which variables went along."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print("results of this job (on the cluster):")
    for key, place in durable_locations(cfg).items():
        err.print(f"  {key:<22} {mask_url_credentials(str(place))}")
    if env_names:
        err.print(f"forwarded to the job: {', '.join(env_names)} (values not shown)")


def cmd_status(args: argparse.Namespace) -> int:
    client = job_client(args.address)
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
    client = job_client(args.address)
    if args.follow:
        follow_logs(client, args.job_id)
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client = job_client(args.address)
    stopped = client.stop_job(args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
