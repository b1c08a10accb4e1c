"""Helpers of the tune tests: tiny trial settings, pipeline files with absolute paths, and a
training function that records each start of a trial."""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from ray import cloudpickle

from train.loop import train
from tune.spec import SweepSpec

STARTS_FILE = "starts.jsonl"  # in the trial folder: one line per start (restores included)

# Every sweep in these tests trains tiny Glows (hidden 8) on digits for a few epochs.
# The model and its init are pinned to the first Glow recipe (plain coupling nets, ActNorm
# initialised on the first 64-image batch): the ASHA test relies on the trials' rung values
# with search seed 0, and these tests are about the sweep, not the model.
TINY_TRAIN: dict[str, Any] = {
    "model": {"name": "glow", "hidden": 8, "levels": 1, "steps": 1, "coupling_actnorm": False},
    "init_images": 64,
    "batch_size": 64,
    "optim": {"warmup_steps": 10},
    "sample_n": 16,
    "sample_temperatures": [1.0],
    "checkpoints_keep": 1,
}


def pipeline_dict(workdir: Path, shards_root: Path, tune: dict[str, Any]) -> dict[str, Any]:
    """A pipeline with absolute paths (workdir, MLflow store, shards) and the tiny trials."""
    return {
        "name": "tunetest",
        "workdir": str(workdir / "work"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "artifact_root": str(workdir / "mlartifacts"),
        },
        "data_prep": {"dataset": "digits", "output_root": str(shards_root)},
        "train": TINY_TRAIN,
        "tune": tune,
    }


def write_pipeline(workdir: Path, shards_root: Path, tune: dict[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(workdir, shards_root, tune)))
    return path


def recording_starts(spec: SweepSpec, pause_s: float = 0.0) -> SweepSpec:
    """`spec` whose in-process trials record every start (`train_recording_starts`) and wait
    `pause_s` after each report (so a test sees each state for that long on any machine).

    The function travels to the trial processes by value: they cannot import this module
    (tests/tune is not on their path)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return replace(spec, train_fn=functools.partial(train_recording_starts, pause_s=pause_s))


def train_recording_starts(cfg, job, world, report, resume=None, *,
                           pause_s: float = 0.0) -> dict[str, Any]:
    """`train.loop.train`, after appending this start to the trial folder: the epoch it resumes
    from (0 when it starts afresh); each report is followed by `pause_s` of waiting."""
    start_epoch = int(resume["counters"]["epoch"]) if resume else 0
    path = Path(job.run_dir) / STARTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({"start_epoch": start_epoch, "time": time.time()}) + "\n")

    def paced(metrics, checkpoint_dir) -> None:
        report(metrics, checkpoint_dir)
        time.sleep(pause_s)

    return train(cfg, job, world, paced, resume)


def read_starts(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The starts `train_recording_starts` wrote for one trial (empty when it never started)."""
    path = Path(trial_dir) / STARTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
