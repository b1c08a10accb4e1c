"""The train stage with its shards and its Ray Train storage in a bucket, once on S3 (a real
moto server) and once on GCS (a real gcp-storage-emulator): checkpoints go to the bucket, and a
run that failed resumes from its checkpoint there when the stage runs again (a worker group
restarted by Ray after a killed worker is the 2-node S3 test's,
tests/cluster/test_multinode_s3.py)."""

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

STEPS_PER_EPOCH = 22  # digits: 1437 train images // global batch 64


def _ctx(tmp_path, mlflow_uri, manifest: str, storage_path: str, train: dict) -> StageContext:
    cfg = PipelineConfig.model_validate({
        "name": "store", "workdir": str(tmp_path / "work"),
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_root": str(tmp_path / "art")},
        "train": {**train, "storage_path": storage_path},
    })
    return StageContext(config=cfg, stage_dir=tmp_path / "work" / "train",
                        inputs={"data_prep": {"manifest": manifest}}, console=Console(width=120))


def test_checkpoints_and_resume_in_a_bucket(bucket, tmp_path, mlflow_uri):
    import torch

    from pipeline.stages import train as stage

    manifest = str(prepare(DataPrepConfig(output_root=f"{bucket}/shards")))
    runs = f"{bucket}/runs"
    train = tiny_train("glow", epochs=2, max_failures=0, checkpoints_keep=2)
    ctx = _ctx(tmp_path, mlflow_uri, manifest, runs, train)
    faults = FaultInjection(fail_at_steps=(30,), fail_rank=1)  # step 30 is in epoch 2
    with pytest.raises(Exception, match="injected failure at step 30"):
        stage.run(ctx, hooks=faults)

    fs = fsspec.filesystem(storage.scheme(bucket), skip_instance_cache=True)
    (run_dir,) = fs.glob(f"{runs.split('://', 1)[1]}/store-train-*")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(run_dir)}
    assert "fault_injected_step30_rank1" in names  # the fault marker lives in the bucket too
    assert len([n for n in names if n.startswith("checkpoint_2")]) == 1  # epoch 1
    assert not (tmp_path / "work" / "ray_results").exists()  # nothing written locally

    out = stage.run(ctx, hooks=faults)  # the stage again: resumes from the bucket's checkpoint

    assert out["checkpoint"].startswith(f"{runs}/store-train-") and out["resumes"] == 1
    client = MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(out["run_id"], "bpd/train")] == [1, 2]
    with storage.local_copy(out["checkpoint"]) as folder:
        state = torch.load(folder / STATE_FILE, weights_only=True)
    assert state["counters"]["step"] == 2 * STEPS_PER_EPOCH
    assert state["counters"]["resumes"] == 1
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
