"""Before `nfpipe submit` sends a pipeline: does the cluster's Python have what the job imports?

A job runs `python -m pipeline.cli` with the Python that Ray finds on the head (the one on the
PATH of `ray start`). A head started outside the project's venv fails only inside the job, after
the upload, with "No module named 'rich'". So `submit` first sends a tiny probe job, with the
same `python`, that imports each module the pipeline needs and prints what it found;
`python_problem` turns that report into one line that says what to do. The probe has a time
limit, and a stopped or silent probe is a failure too.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

# module -> its distribution in requirements.lock: what a job imports first, at its entrypoint
NEEDED = {"rich": "rich", "yaml": "PyYAML", "pydantic": "pydantic", "torch": "torch",
          "mlflow": "mlflow", "webdataset": "webdataset"}
PROBE_TIMEOUT_S = 60.0
REPORT_TAG = "NFPIPE_PYTHON_REPORT "
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"
FIX = ("start Ray from the project's activated venv (`source .venv/bin/activate` before "
       "`ray start`, on every node; README: \"Running on a Ray cluster\") or install the pinned "
       "packages into the Python that runs `ray start` (`pip install -r requirements.lock`)")

_PROBE = f"""
import importlib, importlib.metadata, json, sys
found, errors = {{}}, {{}}
for module, dist in {NEEDED!r}.items():
    try:
        importlib.import_module(module)
        found[module] = importlib.metadata.version(dist)
    except Exception as err:
        errors[module] = f"{{type(err).__name__}}: {{err}}"
print({REPORT_TAG!r} + json.dumps({{"python": sys.executable, "found": found, "errors": errors}}))
"""


class ClusterPythonError(OSError):
    """The cluster's Python cannot run the pipeline (or gave no report of its packages)."""


def probe_entrypoint() -> str:
    """The probe job's command: the same `python` as the pipeline's job."""
    return shlex.join(["python", "-c", _PROBE])


def check_cluster_python(client, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Run the probe as a job on the cluster of `client` (a JobSubmissionClient) and return its
    report (the Python's path, the versions found); raise ClusterPythonError with one line if
    a needed module is missing there or no report came within `timeout_s`."""
    from pipeline.submit import FINAL_STATES, submit_job, wait_final

    job_id = submit_job(client, probe_entrypoint(), {}, {"nfpipe.probe": "python"})
    status = wait_final(client, job_id, timeout_s)
    if status not in FINAL_STATES:
        client.stop_job(job_id)
        status = f"no answer in {timeout_s:.0f} s"
    logs = client.get_job_logs(job_id)
    report = parse_report(logs)
    problem = python_problem(report, logs, status)
    if problem or report is None:
        raise ClusterPythonError(problem)
    return report


def parse_report(logs: str) -> dict | None:
    """The probe's report in its job's logs, or None if it printed none."""
    for line in reversed(logs.splitlines()):
        if line.startswith(REPORT_TAG):
            return json.loads(line[len(REPORT_TAG):])
    return None


def python_problem(report: dict | None, logs: str = "", status: str = "") -> str | None:
    """One line saying what is wrong with the cluster's Python and what to do, or None."""
    if report is None:
        last = logs.strip().splitlines()[-1][:200] if logs.strip() else "no output"
        return (f"the cluster's `python` gave no report of its packages ({status}: {last}); "
                f"a submitted job would run there: {FIX}")
    if not report["errors"]:
        return None
    missing = ", ".join(f"{module} ({error})" for module, error in report["errors"].items())
    return (f"the cluster's Python ({report['python']}) cannot import {missing}: a submitted "
            f"job would fail there; {FIX}")


def version_differences(report: dict, pins: dict[str, str]) -> list[str]:
    """'torch 2.5.0 (pinned 2.14.1)' for every found module whose version is not the pin (a
    local build tag such as +cu121 is not a difference)."""
    differ = []
    for module, version in report["found"].items():
        pinned = pins.get(NEEDED[module].lower())
        if pinned and version.split("+")[0] != pinned.split("+")[0]:
            differ.append(f"{module} {version} (pinned {pinned})")
    return differ


def pinned_versions(lock: Path = LOCK_FILE) -> dict[str, str]:
    """requirements.lock's `name==version` lines, names lower-cased."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins
