"""The one `nfpipe` command line: the parser, logging, and the one error-reporting path.

Commands live in this package (`run`, `models`, `jobs`); only this package imports them.
Every command returns an exit code; whatever it raises is turned into one clear line by
`report_error`: 2 for a configuration or usage error, 1 for a failed stage or service,
130 for Ctrl-C. `-v` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler

from pipeline.cli import jobs, models, run
from pipeline.cli.args import UsageError
from pipeline.cli.errors import explain

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.verbose)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except BaseException as err:  # noqa: BLE001 - sorted into exit codes, else re-raised
        return report_error(err, args.verbose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfpipe", description="Train, tune, register and serve normalizing flows on Ray."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (-vv)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default)")
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in (run, models, jobs):
        module.register_commands(sub)
    return parser


def report_error(err: BaseException, verbose: int = 0) -> int:
    """One clear line on stderr for an error a user can act on, and its exit code. Every line
    passes `mask_url_credentials` last: no password of a URL reaches the terminal."""
    from pipeline.config import ConfigError
    from pipeline.runner import StageFailed
    from pipeline.workdir_lock import WorkdirBusy
    from tracking.store import mask_url_credentials

    console = Console(stderr=True, soft_wrap=True)  # one line each, even in a pipe

    def say(line: str) -> None:
        console.print(mask_url_credentials(line), highlight=False)

    if isinstance(err, KeyboardInterrupt):
        say("[yellow]interrupted[/]: `nfpipe run` resumes where it stopped")
        return EXIT_INTERRUPTED
    explained = explain(err.error if isinstance(err, StageFailed) else err)
    if isinstance(err, StageFailed):
        cause = explained[1] if explained else f"{type(err.error).__name__}: {err.error}"
        say(f"[bold red]stage {err.stage} failed:[/] {cause}")
        say("fix the cause and run again: finished stages are kept, it resumes here")
        code = EXIT_FAILED
    elif explained is not None:
        code, line = explained
        say(f"[bold red]{'error' if code == EXIT_USAGE else 'failed'}:[/] {line}")
    elif isinstance(err, ConfigError):
        say(f"[bold red]config error:[/] {err}")
        code = EXIT_USAGE
    elif _is_usage_error(err):
        say(f"[bold red]error:[/] {err}")
        code = EXIT_USAGE
    elif isinstance(err, WorkdirBusy) or _is_service_error(err):
        say(f"[bold red]failed:[/] {err}")
        code = EXIT_FAILED
    else:
        raise err
    if verbose:
        console.print_exception()
    return code


def _is_usage_error(err: BaseException) -> bool:
    """Bad arguments or input: a search space, an image, a file that is not there."""
    from tune.space import SearchSpaceError

    return isinstance(err, UsageError | SearchSpaceError | FileNotFoundError | ValueError)


def _is_service_error(err: BaseException) -> bool:
    """The registry, the tracking server or the Ray cluster failed or could not be reached."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException | OSError | ConnectionError)


def setup_logging(level: str | None, verbose: int) -> None:
    if level is None:
        level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    # MLflow's own INFO lines ("Creating initial MLflow database tables...") follow the same
    # level; read when mlflow is imported, here and in the Ray workers that inherit it
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level.upper())
    if "mlflow" in sys.modules:  # imported already (main() called in-process): set it here
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    handler = RichHandler(console=Console(stderr=True), show_path=False)
    handler.addFilter(_mask_credentials)
    logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[handler])


def _mask_credentials(record: logging.LogRecord) -> bool:
    """A log handler's filter: the record's message with every URL's userinfo masked."""
    from tracking.store import mask_url_credentials

    record.msg, record.args = mask_url_credentials(record.getMessage()), None
    return True


if __name__ == "__main__":
    sys.exit(main())
