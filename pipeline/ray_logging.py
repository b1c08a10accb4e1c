"""Runs in every worker process of the embedded Ray (Ray Train's controller too), as its
`worker_process_setup_hook`; imports nothing else, since every worker pays for it."""

from __future__ import annotations

import logging

# Ray-internal loggers whose warnings carry a traceback for something harmless on a fixed-size
# local Ray: Ray Train asks its autoscaling coordinator for resources with a 5 s timeout and,
# on a busy machine, logs the timeout with a traceback ("safe to ignore"); nothing waits on it.
QUIET_LOGGERS = (
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)


def quiet_ray_internals() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
