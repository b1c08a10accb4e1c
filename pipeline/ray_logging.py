"""Runs in every worker process of the embedded Ray (Ray Train's controller too), as its
`worker_process_setup_hook`; imports nothing else, since every worker pays for it."""

from __future__ import annotations

import logging
import sys

# Ray-internal loggers whose warnings carry a traceback for something harmless on a fixed-size
# local Ray: Ray Train asks its autoscaling coordinator for resources with a 5 s timeout and,
# on a busy machine, logs the timeout with a traceback ("safe to ignore"); nothing waits on it.
QUIET_LOGGERS = (
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)


def quiet_ray_internals() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_sigterm_exit()


def quiet_sigterm_exit() -> None:
    """Ray stops its processes with SIGTERM, and its handler raises SystemExit wherever the
    process is; inside a garbage-collection callback Python cannot raise it, and prints
    "Exception ignored in … Traceback … SystemExit: 1" instead (seen once in five quickstart
    runs, at the end of the run). That is the process ending as asked: drop it; any other
    unraisable exception is reported as Python would."""
    report = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            report(unraisable)

    sys.unraisablehook = hook
