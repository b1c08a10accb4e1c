"""`nfpipe tune`: run just the sweep (and data_prep first when it is not up to date)."""

from __future__ import annotations

import argparse


def register_commands(sub: argparse._SubParsersAction) -> None:
    from pipeline.cli import add_config_arguments

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


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.cli import config_from_args
    from pipeline.runner import StageFailed, run_pipeline
    from tune.space import validate_space

    if args.address:
        args.sets = [*args.sets, f"ray.address={args.address}"]
    cfg = config_from_args(args)
    validate_space(cfg.tune, cfg.train)  # paths and values now; model sizes once data exist
    console = Console()
    try:
        run_pipeline(cfg, ["tune"], force=args.force, console=console)
    except StageFailed as failure:
        stage, err = failure.args[0], failure.args[1]
        console.print(f"[bold red]stage {stage} failed:[/] {type(err).__name__}: {err}")
        return 1
    return 0
