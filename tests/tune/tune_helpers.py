"""Helpers of the tune tests: tiny trial settings and pipeline files with absolute paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tune.trial import ATTEMPTS_FILE

# Every sweep in these tests trains tiny Glows (hidden 8) on digits for a few epochs.
# The model and its init are pinned to the pre-issue-12 Glow (plain coupling nets, ActNorm
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


def read_attempts(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The starts `_record_attempt` wrote for one trial (empty when it never started)."""
    path = Path(trial_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
