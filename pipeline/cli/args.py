"""Arguments several commands share: how a command reads pipeline.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config models load only when a command reads them (a fast --help)
    from pipeline.config import PipelineConfig

DEFAULT_PIPELINE = Path("pipeline.yaml")


class UsageError(Exception):
    """A bad argument or input: printed without a traceback, exit code 2."""


def needs_action(group: argparse.ArgumentParser) -> None:
    """A command of actions (`nfpipe deploy`) run alone prints its own help: its actions,
    not the top-level commands; exit code 2."""

    def show_actions(args: argparse.Namespace) -> int:
        group.print_help()
        return 2

    group.set_defaults(func=show_actions)


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
    """The pipeline named by the arguments (./pipeline.yaml if present, else the defaults)."""
    from pipeline.config import load_config

    path = getattr(args, "pipeline", None)
    if path is None and DEFAULT_PIPELINE.exists():
        path = DEFAULT_PIPELINE
    return load_config(path, getattr(args, "profile", None), getattr(args, "sets", []))


def invocation_of(args: argparse.Namespace):
    """What the "next" block's commands repeat; a submitted job's files are the cluster's."""
    from pipeline.next_steps import Invocation

    if getattr(args, "resolved_env", None):
        return Invocation()
    return Invocation(args.pipeline, tuple(args.sets))
