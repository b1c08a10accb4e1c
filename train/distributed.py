"""Ray Train wiring: a `TorchTrainer` runs `loop.train` in every worker.

Resume is Ray Train V2's: a run is identified by `RunConfig(storage_path, name)`; running again
with the same pair restores the checkpoint manager's snapshot and `ray.train.get_checkpoint()`
hands every worker the latest checkpoint. `run_name` is therefore a digest of the training
config and the dataset: the same pipeline run resumes, a changed one starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracking import system_metrics
from train.config import ScalingSpec, TrainConfig
from train.ddp import WorkerInfo
from train.loop import NonFiniteLossError, TrainJob, train
from train.reporting import latest_state, reporter

SCORE = "val_bpd"  # checkpoints are ranked by it, lowest first (never by a test figure)
NONFINITE = "nonfinite"  # the status a diverged run returns instead of raising


@dataclass(frozen=True)
class FitResult:
    """What a finished Ray Train run left: the best checkpoint and rank 0's summary."""

    run_name: str
    run_path: str  # the Ray run folder under storage_path
    best_checkpoint: str  # folder of the checkpoint with the lowest val bpd
    best_metrics: dict[str, Any]
    summary: dict[str, Any]  # loop.train's return value on rank 0


def run_name(prefix: str, cfg: TrainConfig, manifest_fingerprint: str) -> str:
    """Deterministic Ray run name: `{prefix}-train-{digest of config and dataset}`."""
    payload = json.dumps(
        {"train": cfg.model_dump(mode="json"), "data": manifest_fingerprint}, sort_keys=True
    )
    return f"{prefix}-train-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def scaling_config(spec: ScalingSpec):
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": spec.cpus_per_worker}
    if spec.use_gpu:
        resources["GPU"] = spec.gpus_per_worker
    return ScalingConfig(
        num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=resources
    )


def check_resources(spec: ScalingSpec) -> None:
    """Fail fast when the workers can never be placed on the connected Ray cluster.

    Ray Train would otherwise wait for the resources forever (an autoscaling cluster would
    add nodes; call this only for a fixed-size cluster such as the embedded local Ray).
    """
    import ray

    total = ray.cluster_resources()
    need = {"CPU": spec.num_workers * spec.cpus_per_worker}
    if spec.use_gpu:
        need["GPU"] = spec.num_workers * spec.gpus_per_worker
    short = {kind: amount for kind, amount in need.items() if amount > total.get(kind, 0)}
    if short:
        have = ", ".join(f"{total.get(kind, 0):g} {kind}" for kind in short)
        want = ", ".join(f"{amount:g} {kind}" for kind, amount in short.items())
        raise ValueError(
            f"train.scaling asks for {want} ({spec.num_workers} workers) but the Ray cluster "
            f"has {have}; lower train.scaling.num_workers / cpus_per_worker or add nodes"
        )


def build_trainer(
    cfg: TrainConfig, job: TrainJob, storage_path: str | Path, name: str,
    callbacks: list | None = None,
):
    """The TorchTrainer of one run (gloo on CPU, NCCL on GPU).

    `callbacks` go to `RunConfig` (a Tune trial passes `[TuneReportCallback()]`).
    `storage_path` is a local path or a URL (s3://…, gs://…): Ray reads and writes it through
    pyarrow, with the credentials and endpoint of the environment of each node (`ray_storage`).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_config = RunConfig(
        name=name,
        **ray_storage(storage_path),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.checkpoints_keep,
            checkpoint_score_attribute=SCORE,
            checkpoint_score_order="min",
        ),
        callbacks=callbacks,
        # per-report INFO lines of Ray Train drown the epoch lines; warnings still show
        logging_config=LoggingConfig(log_level="WARNING"),
    )
    return TorchTrainer(
        train_worker,
        train_loop_config={"train": cfg.model_dump(mode="json"), "job": job},
        scaling_config=scaling_config(cfg.scaling),
        torch_config=TorchConfig(
            backend="nccl" if cfg.scaling.use_gpu else "gloo",
            timeout_s=cfg.collective_timeout_s,
        ),
        run_config=run_config,
    )


def ray_storage(storage_path: str | Path) -> dict[str, Any]:
    """`RunConfig` arguments for a storage location: `storage_path`, and for a gs:// URL while
    `STORAGE_EMULATOR_HOST` is set, the pyarrow file system of that emulator.

    Ray resolves a URL with pyarrow, whose GCS client ignores STORAGE_EMULATOR_HOST (which
    gcsfs reads) and, given CLOUD_STORAGE_EMULATOR_ENDPOINT, still looks for Google's default
    credentials (offline: a hang). An emulator takes no credentials, so the file system is
    anonymous; it is pickled with the run config, so every worker reaches the same endpoint.
    """
    location = str(storage_path)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    scheme, _, path = location.partition("://")
    if not emulator or scheme not in ("gs", "gcs"):
        return {"storage_path": location}
    from pyarrow.fs import GcsFileSystem

    protocol, _, host = emulator.rpartition("://")
    filesystem = GcsFileSystem(anonymous=True, scheme=protocol or "http",
                               endpoint_override=host.rstrip("/"))
    return {"storage_path": path, "storage_filesystem": filesystem}


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Body of every Ray Train worker: re-validate the config, resume if possible, train.

    A diverged run (NonFiniteLossError, raised alike on every rank) returns its message
    instead of raising, so Ray does not restart a failure that would only repeat. Rank 0
    samples the machine's system metrics into the MLflow run while it trains.
    """
    import ray.train
    import ray.train.torch

    quiet_worker_logging()

    cfg = TrainConfig.model_validate(config["train"])
    context = ray.train.get_context()
    world = WorkerInfo(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=str(ray.train.torch.get_device()),
        threads=cfg.scaling.cpus_per_worker,
    )
    job: TrainJob = config["job"]
    run = (job.tracking_uri, job.mlflow_run_id) if world.is_chief else (None, None)
    try:
        with system_metrics(*run):
            return train(cfg, job, world, reporter(ray.train), latest_state(ray.train))
    except NonFiniteLossError as err:
        return {"status": NONFINITE, "message": str(err)}


def quiet_worker_logging() -> None:
    """Warnings and errors only from the worker's root logger.

    Ray Train sets it to INFO in its workers, and logs every report there ("Reporting
    training result N: TrainingReport(...)", two lines per epoch and rank, through a logger
    named after its file path that the `ray.train` level does not reach)."""
    logging.getLogger().setLevel(logging.WARNING)


def run_trainer(
    cfg: TrainConfig, job: TrainJob, storage_path: str | Path, name: str,
    callbacks: list | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build and fit the TorchTrainer of run `name` (resuming it when its folder holds a
    checkpoint); return Ray's `Result` and rank 0's summary (`loop.train`'s return value).

    The train stage and a data-parallel Tune trial both run it. Raises NonFiniteLossError on
    divergence (the workers return it as a status, `train_worker`) or Ray's error when the
    retries are exhausted.
    """
    result = build_trainer(cfg, job, storage_path, name, callbacks).fit()
    summary = result.return_value or {}
    if summary.get("status") == NONFINITE:
        raise NonFiniteLossError(summary["message"])
    return result, summary


def fit(cfg: TrainConfig, job: TrainJob, storage_path: str | Path, name: str) -> FitResult:
    """Run (or resume) the Ray Train run `name`, and find its best checkpoint."""
    result, summary = run_trainer(cfg, job, storage_path, name)
    best, metrics = best_checkpoint(result)
    return FitResult(name, as_location(result.filesystem, result.path), best, metrics, summary)


def best_checkpoint(result) -> tuple[str, dict[str, Any]]:
    """(folder: an absolute path or a URL, metrics) of the kept checkpoint with the lowest
    finite val bpd (`SCORE`)."""
    scored = [
        (as_location(ckpt.filesystem, ckpt.path), metrics)
        for ckpt, metrics in (result.best_checkpoints or [])
        if math.isfinite(float(metrics.get(SCORE, math.nan)))
    ]
    if not scored:
        raise RuntimeError(f"run {result.path} has no checkpoint with a finite {SCORE}")
    return min(scored, key=lambda item: item[1][SCORE])


def as_location(filesystem, path: str) -> str:
    """A path inside a pyarrow file system as a location: the path when local, else a URL
    (pyarrow's S3 paths are `bucket/key`, without the scheme)."""
    kind = getattr(filesystem, "type_name", "local")
    if kind == "local":
        return str(path)
    return f"{'gs' if kind == 'gcs' else kind}://{str(path).lstrip('/')}"
