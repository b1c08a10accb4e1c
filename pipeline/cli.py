"""The `nfpipe` command line: run the pipeline, show its config, and the parts' own commands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.logging import RichHandler

from pipeline.config import ConfigError, PipelineConfig, load_config, validate

DEFAULT_PIPELINE = Path("pipeline.yaml")
# Parts that add their own subcommands with `register_commands(subparsers)`.
COMMAND_MODULES = ("deploy.cli", "tune.cli", "pipeline.submit")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.verbose)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        Console(stderr=True).print(f"[bold red]config error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]: `nfpipe run` resumes where it stopped")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfpipe", description="Train, tune, register and serve normalizing flows on Ray."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (-vv)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default)")
    sub = parser.add_subparsers(metavar="COMMAND")
    add_run_command(sub)
    add_config_command(sub)
    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module).register_commands(sub)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """PIPELINE, --profile and --set: how every command that reads pipeline.yaml takes it."""
    parser.add_argument(
        "pipeline", nargs="?", type=Path, default=None,
        help="pipeline file (default: ./pipeline.yaml if present, else the built-in defaults)",
    )
    parser.add_argument("--profile", default=None, help="named overrides from `profiles:`")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=3 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    path = args.pipeline
    if path is None and DEFAULT_PIPELINE.exists():
        path = DEFAULT_PIPELINE
    return load_config(path, args.profile, args.sets)


def add_run_command(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the pipeline (skips stages that are up to date)")
    add_config_arguments(run)
    run.add_argument("--stages", default=None, help="comma-separated stages to run (and needs)")
    run.add_argument("--force", action="store_true", help="re-run the selected stages")
    run.add_argument("--address", default=None, help="Ray cluster to use ('auto' on a node)")
    run.add_argument("--resolved-env", default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import StageFailed, run_pipeline

    if args.address:
        args.sets = [*args.sets, f"ray.address={args.address}"]
    if args.resolved_env:  # a submitted job: the config resolved on the submitting machine
        cfg = validate(json.loads(os.environ[args.resolved_env]))
    else:
        cfg = config_from_args(args)
    targets = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    console = Console()
    try:
        run_pipeline(cfg, targets, force=args.force, console=console)
    except StageFailed as failure:
        stage, err = failure.args[0], failure.args[1]
        console.print(f"[bold red]stage {stage} failed:[/] {type(err).__name__}: {err}")
        console.print("fix the cause and run again: finished stages are kept, it resumes here")
        if args.verbose:
            console.print_exception()
        return 1
    from pipeline.next_steps import print_next_steps

    print_next_steps(cfg, console)
    return 0


def add_config_command(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="inspect the configuration")
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


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from pipeline.reference import config_reference, with_reference

    table = config_reference(PipelineConfig)
    if args.update is None:
        print(table, end="")
    else:
        args.update.write_text(with_reference(args.update.read_text(), table))
    return 0


def setup_logging(level: str | None, verbose: int) -> None:
    if level is None:
        level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


if __name__ == "__main__":
    sys.exit(main())
