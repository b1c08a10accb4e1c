"""A sweep whose shards and Tune storage are on S3 (a real moto server): the trials read the
shards from the bucket, checkpoint there, and the best one is exported from there."""

from __future__ import annotations

import json

import fsspec
import pytest
import yaml
from tune_helpers import pipeline_dict

from pipeline.cli import main

pytestmark = pytest.mark.slow

SWEEP = {"space": {"model.steps": [1, 2]}, "num_samples": 2, "scheduler": "fifo", "max_t": 1,
         "max_concurrent_trials": 1, "verbose": False}


def test_sweep_on_s3(ray_local, s3_bucket, tmp_path):
    raw = pipeline_dict(tmp_path, tmp_path, SWEEP)
    raw["data_prep"]["output_root"] = f"{s3_bucket}/shards"
    raw["train"] = {**raw["train"], "storage_path": f"{s3_bucket}/runs"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert main(["tune", str(path)]) == 0

    out = json.loads((tmp_path / "work" / "records" / "tune.json").read_text())["outputs"]
    assert out["checkpoint"].startswith(f"{s3_bucket}/runs/tune/")
    assert out["experiment_path"].startswith(f"{s3_bucket}/runs/tune/")
    assert (tmp_path / "work" / "tune" / "model" / "model.safetensors").exists()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.glob(f"{out['checkpoint'].removeprefix('s3://')}/model/model.safetensors")
    assert not (tmp_path / "work" / "tune" / "ray_results").exists()
