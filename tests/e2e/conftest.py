"""The default pipeline, run once per test process as `make run` runs it (tiny settings): the
quickstart test checks its log, records and re-runs; the MLflow-conventions tests read its
training run back. One run serves both because a pipeline run costs about a minute here."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from e2e_helpers import nfpipe_run
from helpers import REPO, free_port


@pytest.fixture(scope="session")
def stale_ray_tmpdir():
    """Ray's temp folder holding the address file of a `ray start` head that is gone (a port
    nothing listens on). Short: Ray's socket paths must stay under 107 characters."""
    folder = Path(tempfile.mkdtemp(prefix="nfr", dir="/tmp"))
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory, stale_ray_tmpdir) -> tuple[Path, subprocess.CompletedProcess]:
    """The first `nfpipe run` in a fresh folder holding a copy of pipeline.yaml, with a stale
    `ray start` address file in Ray's temp folder (a killed head leaves one) and system metrics
    sampled every second (so a run of seconds has some): the folder and the finished process."""
    workdir = tmp_path_factory.mktemp("quickstart")
    shutil.copy(REPO / "pipeline.yaml", workdir / "pipeline.yaml")
    first = nfpipe_run(workdir, RAY_TMPDIR=str(stale_ray_tmpdir),
                       MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    return workdir, first
