"""Errors of Ray and MLflow that a user can act on, each as one line that says the fix.

`explain(err)` returns (exit code, message) for the failures people meet (a cluster or a
tracking server that is not there, a head whose job agent is not up yet, an unknown job), or
None for everything else. Only `pipeline.cli.report_error` calls it; nothing here imports Ray
or MLflow at module level, so `nfpipe --help` stays fast.
"""

from __future__ import annotations

import re

EXIT_FAILED, EXIT_USAGE = 1, 2

_RAY_UNREACHABLE = re.compile(r"Failed to connect to Ray at address: (\S+?)\.?$")
_HTTP_STATUS = re.compile(r"Request failed with status code (\d+): (.*)", re.S)


class ServiceUnreachable(ConnectionError):
    """A service (MLflow tracking server, Ray dashboard) did not answer; the message says
    which, where, and how to fix it. Exit code 1 (2 when the address came from an argument)."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def explain(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a known Ray or MLflow failure, else None."""
    text = str(err).strip()
    if isinstance(err, ServiceUnreachable):
        return (EXIT_USAGE if err.usage else EXIT_FAILED), text
    found = _RAY_UNREACHABLE.search(text)
    if isinstance(err, ConnectionError) and found:
        return EXIT_USAGE, (
            f"no Ray dashboard answers at {found.group(1)}: start the cluster "
            "(`ray start --head --dashboard-port 8265`) or pass --address http://HEAD:8265 "
            "(or set RAY_API_SERVER_ADDRESS)"
        )
    status = _HTTP_STATUS.search(text)
    if isinstance(err, RuntimeError) and status:
        return _ray_http_error(int(status.group(1)), status.group(2).strip())
    return None


def _ray_http_error(code: int, body: str) -> tuple[int, str]:
    """A Ray Jobs API error answer, with what to do about it."""
    first = body.splitlines()[0][:200] if body else ""
    if "No available agent" in body:
        return EXIT_FAILED, (
            f"the Ray cluster refused the request (HTTP {code}, \"No available agent\"): its "
            "job agent is not up yet or has died; wait until `ray status` lists the head "
            "node and try again, or restart the head (`ray stop; ray start --head`)"
        )
    if code == 404:
        return EXIT_USAGE, (
            f"the Ray cluster does not know this job (HTTP 404: {first}); "
            "`ray job list` shows the job ids"
        )
    return EXIT_FAILED, f"the Ray cluster answered HTTP {code}: {first}"
