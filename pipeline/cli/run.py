"""`nfpipe run`, `nfpipe tune` and `nfpipe config show|reference`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from pipeline.cli.args import (
    UsageError,
    add_config_arguments,
    config_from_args,
    invocation_of,
    needs_action,
)

if TYPE_CHECKING:  # the config models load only when a command runs (a fast --help)
    from pipeline.config import PipelineConfig


def register_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the pipeline (skips stages that are up to date)")
    add_config_arguments(run)
    run.add_argument("--stages", default=None, help="comma-separated stages to run (and needs)")
    run.add_argument("--force", action="store_true", help="re-run the selected stages")
    run.add_argument("--address", default=None, help="Ray cluster to use ('auto' on a node)")
    run.add_argument("--resolved-env", default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser(
        "tune",
        help="run the hyperparameter sweep declared under `tune:` (Ray Tune + MLflow)",
        description="Run the sweep of pipeline.yaml's `tune:` section, e.g. "
        "`nfpipe tune --set tune.num_samples=16 --set tune.scheduler=asha`. A finished sweep "
        "is skipped; an interrupted one resumes.",
    )
    add_config_arguments(tune)
    tune.add_argument("--force", action="store_true", help="run the stage even if up to date")
    tune.add_argument("--address", default=None, help="Ray cluster to use ('auto' on a node)")
    tune.set_defaults(func=cmd_tune)

    config = sub.add_parser("config", help="inspect the configuration")
    needs_action(config)
    config_sub = config.add_subparsers(metavar="ACTION")
    show = config_sub.add_parser("show", help="print the fully resolved configuration")
    add_config_arguments(show)
    show.set_defaults(func=cmd_config_show)
    reference = config_sub.add_parser("reference", help="print every key as Markdown")
    reference.add_argument(
        "--update", type=Path, default=None, metavar="README",
        help="rewrite the reference block of this file instead of printing",
    )
    reference.set_defaults(func=cmd_config_reference)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.next_steps import print_next_steps
    from pipeline.ray_session import disconnect_ray
    from pipeline.runner import run_pipeline

    targets = parse_stages(args.stages)
    cfg = _config(args)
    console = Console(soft_wrap=True)  # a long line stays one line in a log
    outcomes = run_pipeline(cfg, targets, force=args.force, console=console,
                            release=disconnect_ray)
    print_next_steps(cfg, console, outcomes, invocation_of(args))
    return 0


def parse_stages(text: str | None) -> list[str] | None:
    """`--stages a,b` as a list; None when not given. Given but empty is a usage error."""
    if text is None:
        return None
    stages = [name.strip() for name in text.split(",") if name.strip()]
    if not stages:
        raise UsageError(f"--stages {text!r} names no stage; give e.g. --stages train,evaluate "
                         "or leave it out to run pipeline.yaml's `stages`")
    return stages


def cmd_tune(args: argparse.Namespace) -> int:
    from pipeline.next_steps import print_block, tune_next_steps
    from pipeline.ray_session import disconnect_ray
    from pipeline.runner import run_pipeline
    from tune.space import validate_space

    cfg = _config(args)
    validate_space(cfg.tune, cfg.train)  # paths and values now; model sizes once data exist
    console = Console(soft_wrap=True)
    run_pipeline(cfg, ["tune"], force=args.force, console=console, release=disconnect_ray)
    print_block(console, tune_next_steps(cfg, invocation_of(args)))
    return 0


def _config(args: argparse.Namespace) -> PipelineConfig:
    """The config to run: resolved here, or (a submitted job) as resolved by the submitter."""
    from pipeline.config import validate

    if getattr(args, "resolved_env", None):
        return validate(json.loads(os.environ[args.resolved_env]))
    if args.address:
        args.sets = [*args.sets, f"ray.address={args.address}"]
    return config_from_args(args)


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from tracking.store import mask_url_credentials

    cfg = config_from_args(args)
    shown = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    print(mask_url_credentials(shown), end="")  # a URL's password stays out of pasted output
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from pipeline.config import PipelineConfig
    from pipeline.reference import config_reference, with_reference

    table = config_reference(PipelineConfig)
    if args.update is None:
        print(table, end="")
    else:
        args.update.write_text(with_reference(args.update.read_text(), table))
    return 0
