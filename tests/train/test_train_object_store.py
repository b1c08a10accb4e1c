"""The train stage with its shards and its Ray Train storage in a bucket, once on S3 (a real
moto server) and once on GCS (a real gcp-storage-emulator): checkpoints go to the bucket, and a
worker group that failed restarts from its checkpoint there (a killed worker on a 2-node
cluster is tests/cluster/test_multinode_s3.py's)."""

from __future__ import annotations

import fsspec
import pytest
from mlflow import MlflowClient
from rich.console import Console
from train_helpers import tiny_train

from data_prep import DataPrepConfig, DataPrepError, prepare, storage
from pipeline.config import PipelineConfig
from pipeline.stages.base import StageContext
from train.checkpoint import STATE_FILE
from train.hooks import FaultInjection

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

STEPS_PER_EPOCH = 19  # digits: 1258 train images // global batch 64


def _ctx(tmp_path, mlflow_uri, manifest: str, storage_path: str, train: dict) -> StageContext:
    cfg = PipelineConfig.model_validate({
        "name": "store", "workdir": str(tmp_path / "work"),
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_root": str(tmp_path / "art")},
        "train": {**train, "storage_path": storage_path},
    })
    return StageContext(config=cfg, stage_dir=tmp_path / "work" / "train",
                        inputs={"data_prep": {"manifest": manifest}}, console=Console(width=120))


def test_checkpoints_and_resume_in_a_bucket(bucket, tmp_path, mlflow_uri):
    """One fit: rank 1 fails in epoch 2, and Ray Train restarts the worker group from the
    checkpoint of epoch 1, read back from the bucket (a failed run resumed by running the
    stage again is test_fault_resume.py's, on local storage: the same Ray Train restore)."""
    import torch

    from pipeline.stages import train as stage

    manifest = str(prepare(DataPrepConfig(output_root=f"{bucket}/shards")))
    runs = f"{bucket}/runs"
    train = tiny_train("glow", epochs=2, max_failures=1, checkpoints_keep=2)
    ctx = _ctx(tmp_path, mlflow_uri, manifest, runs, train)
    faults = FaultInjection(fail_at_steps=(30,), fail_rank=1)  # step 30 is in epoch 2

    out = stage.run(ctx, hooks=faults)

    fs = fsspec.filesystem(storage.scheme(bucket), skip_instance_cache=True)
    (run_dir,) = fs.glob(f"{runs.split('://', 1)[1]}/store-train-*")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(run_dir)}
    assert "fault_injected_step30_rank1" in names  # the fault marker lives in the bucket too
    assert len([n for n in names if n.startswith("checkpoint_2")]) == 2  # epochs 1 and 2
    assert not (tmp_path / "work" / "ray_results").exists()  # nothing written locally
    assert out["checkpoint"].startswith(f"{runs}/store-train-") and out["resumes"] == 1
    client = MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(out["run_id"], "bpd/train")] == [1, 2]
    with storage.local_copy(out["checkpoint"]) as folder:
        state = torch.load(folder / STATE_FILE, weights_only=True)
    assert state["counters"]["step"] == 2 * STEPS_PER_EPOCH
    assert state["counters"]["resumes"] == 1  # restored once, from epoch 1's checkpoint
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2]  # no epoch lost or repeated
    assert (tmp_path / "work" / "train" / "model" / "model.safetensors").exists()


def test_a_changed_shard_stops_the_stage_before_any_worker(bucket, tmp_path, mlflow_uri):
    from pipeline.stages import train as stage

    manifest = str(prepare(DataPrepConfig(output_root=f"{bucket}/shards")))
    victim = f"{bucket}/shards/digits-8x8-5bit/train-00003.tar"
    fs = fsspec.filesystem(storage.scheme(bucket), skip_instance_cache=True)
    fs.pipe_file(victim, fs.cat_file(victim)[:-1024])  # truncated
    ctx = _ctx(tmp_path, mlflow_uri, manifest, f"{bucket}/runs", tiny_train("glow"))
    with pytest.raises(DataPrepError, match=f"^{victim}: sha256 differs .*1 of \\d+ shards"):
        stage.run(ctx)
    assert not fs.exists(f"{bucket}/runs")  # no Ray Train run was started
