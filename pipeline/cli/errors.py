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


def explain(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a known Ray or MLflow failure, else None."""
    text = str(err).strip()
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
    if type(err).__name__ == "MlflowException":  # no mlflow import for a name check
        return EXIT_FAILED, _mlflow_error(err, text)
    return None


def _mlflow_error(err: BaseException, text: str) -> str:
    """The first line of an MLflow error (its server-side traceback left out), and a hint."""
    first = text.splitlines()[0][:300] if text else type(err).__name__
    code = str(getattr(err, "error_code", ""))
    if code == "RESOURCE_DOES_NOT_EXIST":
        return f"MLflow: {first} (`nfpipe models list` shows the registered models)"
    if "Max retries exceeded" in text or "Connection refused" in text:
        return (f"MLflow: the tracking server stopped answering ({first}); check that it "
                "still runs, then run again (finished stages are kept)")
    return f"MLflow: {first}"


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
