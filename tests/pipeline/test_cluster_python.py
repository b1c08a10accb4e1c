"""The check of the cluster's Python that `nfpipe submit` runs before sending: the probe's own
command, run here by bash as Ray's job agent runs it, and the one line it turns a report into.
(`tests/cluster/test_submit.py` runs it as a job on a real head whose Python lacks `rich`.)"""

from __future__ import annotations

import subprocess

from helpers import subprocess_env

from pipeline.cluster_python import (
    FIX,
    NEEDED,
    parse_report,
    pinned_versions,
    probe_entrypoint,
    python_problem,
    version_differences,
)


def run_probe(**env: str) -> str:
    """The probe's entrypoint in a shell, with this venv's `python` first on the PATH."""
    proc = subprocess.run(["bash", "-c", probe_entrypoint()], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_venvs_python_has_every_needed_module_at_its_pin():
    report = parse_report(run_probe())
    assert report is not None and report["errors"] == {}
    assert set(report["found"]) == set(NEEDED)
    assert python_problem(report) is None
    assert version_differences(report, pinned_versions()) == []


def test_a_module_the_python_cannot_import_is_one_line_that_says_what_to_do(tmp_path):
    (tmp_path / "rich.py").write_text("raise ImportError('rich is not installed here')\n")
    report = parse_report(run_probe(PYTHONPATH=str(tmp_path)))
    assert report is not None and set(report["errors"]) == {"rich"}
    line = python_problem(report)
    assert line is not None and "\n" not in line
    assert "cannot import rich (ImportError: rich is not installed here)" in line
    assert report["python"] in line and "source .venv/bin/activate" in line
    assert "pip install -r requirements.lock" in line


def test_no_report_is_a_problem_naming_what_the_job_said():
    logs = "some output\nbash: line 1: python: command not found\n"
    line = python_problem(None, logs, "FAILED")
    assert line is not None and "\n" not in line
    assert "(FAILED: bash: line 1: python: command not found)" in line and FIX in line
    assert "no output" in python_problem(None, "", "no answer in 60 s")


def test_versions_other_than_the_pins_are_named_but_a_local_build_tag_is_not():
    pins = {"torch": "2.14.1", "rich": "15.0.0", "pyyaml": "6.0.4"}
    report = {"found": {"torch": "2.14.1+cu121", "rich": "14.0.0", "yaml": "6.0.4"}}
    assert version_differences(report, pins) == ["rich 14.0.0 (pinned 15.0.0)"]
