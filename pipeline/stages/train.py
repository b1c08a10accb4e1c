"""train stage: data-parallel training on Ray Train, tracked in MLflow (see train/).

The stage orchestrates: it names the Ray run (`identity.run_name_for`: resumed by default, new
on --force), opens its MLflow run (`tracking.TrainingRun`), hands a `TrainJob` to `fit` (Ray
Train's by default; tests pass an in-process one) and exports the best checkpoint's model.
A run whose MLflow run has FINISHED and whose export is in place is not fitted again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import tracking
from data_prep import Manifest, storage
from data_prep.verify import check_shards
from pipeline.node_check import check_storage_on_all_nodes
from pipeline.progress import epoch_progress
from pipeline.ray_session import ensure_ray
from pipeline.records import write_json_atomic
from pipeline.stages.base import StageContext, StageOutputs
from pipeline.stages.identity import run_name_for
from tracking.training_run import TrainingRun
from train import distributed
from train.config import TrainConfig
from train.distributed import FitResult, check_resources, run_name
from train.export import export_bundle, history_table
from train.hooks import NO_HOOKS, TrainHooks
from train.loop import TrainJob
from train.run_record import dataset_record, resolved_params

PROGRESS_FILE = "progress.jsonl"  # in the Ray run's folder: rank 0's line per epoch
FINISHED_FILE = "finished.json"  # in the stage folder: the last finished run and its outputs

Fit = Callable[[TrainConfig, TrainJob, str, str], FitResult]  # (cfg, job, storage_path, name)
Cluster = Callable[[StageContext, Manifest, str], None]  # (ctx, manifest, storage_path)


def prepare_cluster(ctx: StageContext, manifest: Manifest, storage_path: str) -> None:
    """Start or join Ray, check the workers fit, and that every node reads the shards and the
    SQLite store and writes the storage path."""
    cfg = ctx.config
    ensure_ray(cfg.ray)
    if not cfg.ray.address:  # the embedded local Ray cannot grow: fail now, not hang
        check_resources(cfg.train.scaling)
    store = tracking.sqlite_folder(ctx.tracking_uri)
    check_storage_on_all_nodes(reads=[manifest.location, *([str(store)] if store else [])],
                               writes=[storage_path])


def run(ctx: StageContext, hooks: TrainHooks = NO_HOOKS, fit: Fit = distributed.fit,
        cluster: Cluster = prepare_cluster) -> StageOutputs:
    """Train (or resume) the configured model; `hooks` inject faults in tests.

    `fit` trains the run (default: Ray Train's `train.distributed.fit`); `cluster` readies
    what it runs on first (default: start or join Ray and check the nodes; a `fit` without
    Ray passes a no-op)."""
    cfg = ctx.config
    manifest = Manifest.load(ctx.inputs["data_prep"]["manifest"])
    manifest.require_split("val")  # models are chosen on it
    check_shards(manifest)  # on the driver, before any worker starts: one line naming the shard
    name = run_name_for(ctx, run_name(cfg.name, cfg.train, manifest.fingerprint))
    done = finished_outputs(ctx, name)
    if done is not None:
        ctx.console.print(f"    Ray Train run {name} has finished (MLflow run "
                          f"{done['run_id']}); its model is in {done['model_dir']}",
                          highlight=False)
        return done
    storage_path = storage.absolute(cfg.train.storage_path or Path(cfg.workdir) / "ray_results")
    storage.make_folder(storage_path)
    cluster(ctx, manifest, storage_path)
    mlflow_run = TrainingRun.open(
        ctx.tracking_uri, ctx.experiment_id(), name,
        resolved_params(cfg.train, manifest, name=cfg.name,
                        **{"data_prep.manifest": manifest.location}),
        {"pipeline": cfg.name, "stage": "train", "model": cfg.train.model.name,
         "workers": str(cfg.train.scaling.num_workers)},
        dataset_record(manifest),
    )
    meta = {"dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
            "train_run": name}
    run_dir = storage.join(storage_path, name)
    progress = _progress_file(ctx, run_dir, name)
    job = TrainJob(manifest.location, run_dir, mlflow_run.tracking_uri, mlflow_run.run_id, meta,
                   verbose=False, progress_file=str(progress), hooks=hooks)
    ctx.console.print(f"    Ray Train run {name} ({cfg.train.scaling.num_workers} workers) → "
                      f"{run_dir}; MLflow run {mlflow_run.run_id}", highlight=False)
    with epoch_progress(progress, cfg.train.epochs, ctx.console), mlflow_run.failing_on_error():
        result = fit(cfg.train, job, storage_path, name)
    model_dir = export_bundle(result.best_checkpoint, ctx.stage_dir / "model",
                              {**meta, "run_id": mlflow_run.run_id,
                               "checkpoint": result.best_checkpoint})
    mlflow_run.log_bundle(model_dir)
    if not mlflow_run.record_ddp_check(result.summary.get("step1_digests") or []):
        ctx.console.print("[bold red]warning[/]: ranks held different weights after step 1")
    mlflow_run.finish()
    ctx.console.print(history_table(result.summary.get("history", []), name))
    outputs = _outputs(result, model_dir, mlflow_run.run_id)
    write_json_atomic(ctx.stage_dir / FINISHED_FILE, {"train_run": name, "outputs": outputs})
    return outputs


def finished_outputs(ctx: StageContext, name: str) -> StageOutputs | None:
    """The outputs of Ray run `name` when it has finished: this stage recorded them, its
    MLflow run is FINISHED and the exported model is that run's. Else None (train)."""
    try:
        finished = json.loads((ctx.stage_dir / FINISHED_FILE).read_text())
        outputs = finished["outputs"]
        exported = json.loads((Path(outputs["model_dir"]) / "meta.json").read_text())
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if finished.get("train_run") != name or exported.get("run_id") != outputs.get("run_id"):
        return None
    mlflow_run = TrainingRun.finished(ctx.tracking_uri, ctx.experiment_id(), name)
    if mlflow_run is None or mlflow_run.run_id != outputs["run_id"]:
        return None
    return outputs


def _progress_file(ctx: StageContext, run_dir: str, name: str) -> Path:
    """Where rank 0 appends its line per epoch for the driver's progress bar: in the run's
    folder on local (or NFS) storage; beside the stage's outputs when the storage is an
    object store (rank 0 cannot append to an object)."""
    if storage.is_remote(run_dir):
        return ctx.stage_dir / f"{name}.{PROGRESS_FILE}"
    return Path(run_dir) / PROGRESS_FILE


def _outputs(result: FitResult, model_dir: Path, run_id: str) -> StageOutputs:
    outputs: StageOutputs = {
        "model_dir": str(model_dir),
        "checkpoint": result.best_checkpoint,
        "run_id": run_id,
        "val_bpd": float(result.best_metrics["val_bpd"]),  # the chosen checkpoint's
        "best_epoch": int(result.best_metrics["epoch"]),
        "ray_run": result.run_path,
        "resumes": int(result.summary.get("resumes", 0)),  # restores from a checkpoint
    }
    final = result.summary.get("final", {})
    for key, value in final.items():  # the k-draw bound at the last epoch (train.eval_k)
        if key.startswith("val_bpd_k"):
            outputs[key] = float(value)
    return outputs
