"""train stage: data-parallel training on Ray Train, tracked in MLflow (see train/)."""

from __future__ import annotations

from pathlib import Path

import tracking
from data_prep import Manifest, storage
from data_prep.verify import check_shards
from pipeline.node_check import check_storage_on_all_nodes
from pipeline.progress import epoch_progress
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs
from pipeline.stages.identity import run_name_for
from train.config import TrainConfig
from train.distributed import FitResult, check_resources, fit, run_name
from train.export import export_bundle, history_table
from train.hooks import NO_HOOKS, TrainHooks
from train.loop import TrainJob, resolve_model_config

RUN_TAG = "nfpipe.train_run"  # the MLflow run of a Ray Train run, found again on resume
PROGRESS_FILE = "progress.jsonl"  # in the Ray run's folder: rank 0's line per epoch
DDP_TAG = "nfpipe.ddp.step1_digests"  # every rank's weight digest after step 1 (all equal)


def run(ctx: StageContext, hooks: TrainHooks = NO_HOOKS) -> StageOutputs:
    """Train (or resume) the configured model; `hooks` inject faults in tests."""
    cfg = ctx.config
    manifest = Manifest.load(ctx.inputs["data_prep"]["manifest"])
    check_shards(manifest)  # on the driver, before any worker starts: one line naming the shard
    uri = ctx.tracking_uri
    storage_path = _prepare_cluster(ctx, manifest, uri)
    name = run_name_for(ctx, run_name(cfg.name, cfg.train, manifest.fingerprint))
    run_id = _open_run(ctx, uri, name, manifest)
    meta = {"dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
            "train_run": name}
    run_dir = storage.join(storage_path, name)
    progress = _progress_file(ctx, run_dir, name)
    job = TrainJob(manifest.location, run_dir, uri, run_id, meta, verbose=False,
                   progress_file=str(progress), hooks=hooks)
    ctx.console.print(f"    Ray Train run {name} ({cfg.train.scaling.num_workers} workers) → "
                      f"{run_dir}; MLflow run {run_id}", highlight=False)
    with epoch_progress(progress, cfg.train.epochs, ctx.console):
        result = _fit_tracked(cfg.train, job, storage_path, name)
    model_dir = export_bundle(result.best_checkpoint, ctx.stage_dir / "model",
                              {**meta, "run_id": run_id, "checkpoint": result.best_checkpoint})
    tracking.log_artifacts(uri, run_id, model_dir, "model_bundle")
    _record_ddp_check(ctx, uri, run_id, result.summary.get("step1_digests") or [])
    tracking.finish_run(uri, run_id)
    ctx.console.print(history_table(result.summary.get("history", []), name))
    return _outputs(result, model_dir, run_id)


def _open_run(ctx: StageContext, uri: str, name: str, manifest: Manifest) -> str:
    """The MLflow run of Ray run `name` (reopened on resume), with its dataset input."""
    cfg = ctx.config
    run_id = tracking.reopen_or_create(uri, ctx.experiment_id(), {RUN_TAG: name}, name,
                                       _params(ctx, manifest), _tags(cfg.name, manifest, cfg.train))
    log_dataset(uri, run_id, manifest)
    return run_id


def _progress_file(ctx: StageContext, run_dir: str, name: str) -> Path:
    """Where rank 0 appends its line per epoch for the driver's progress bar: in the run's
    folder on local (or NFS) storage; beside the stage's outputs when the storage is an
    object store (rank 0 cannot append to an object)."""
    if storage.is_remote(run_dir):
        return ctx.stage_dir / f"{name}.{PROGRESS_FILE}"
    return Path(run_dir) / PROGRESS_FILE


def _prepare_cluster(ctx: StageContext, manifest: Manifest, tracking_uri: str) -> str:
    """Start or join Ray, check the workers fit, and that every node reads the shards and the
    SQLite store and writes the storage path; return the Ray Train storage path (an absolute
    path or a URL)."""
    cfg = ctx.config
    ensure_ray(cfg.ray)
    if not cfg.ray.address:  # the embedded local Ray cannot grow: fail now, not hang
        check_resources(cfg.train.scaling)
    storage_path = storage.absolute(cfg.train.storage_path or Path(cfg.workdir) / "ray_results")
    storage.make_folder(storage_path)
    store = tracking.sqlite_folder(tracking_uri)
    check_storage_on_all_nodes(reads=[manifest.location, *([str(store)] if store else [])],
                               writes=[storage_path])
    return storage_path


def _fit_tracked(train: TrainConfig, job: TrainJob, storage_path: str, name: str) -> FitResult:
    """`fit`, marking the MLflow run FAILED (or KILLED on Ctrl-C) when it raises."""
    try:
        return fit(train, job, storage_path, name)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        tracking.finish_run(job.tracking_uri, job.mlflow_run_id, status)
        raise


def _outputs(result: FitResult, model_dir: Path, run_id: str) -> StageOutputs:
    outputs: StageOutputs = {
        "model_dir": str(model_dir),
        "checkpoint": result.best_checkpoint,
        "run_id": run_id,
        "test_bpd": float(result.best_metrics["test_bpd"]),
        "best_epoch": int(result.best_metrics["epoch"]),
        "ray_run": result.run_path,
        "resumes": int(result.summary.get("resumes", 0)),  # restores from a checkpoint
    }
    final = result.summary.get("final", {})
    for key, value in final.items():  # the k-draw bound at the last epoch (train.eval_k)
        if key.startswith("test_bpd_k"):
            outputs[key] = float(value)
    return outputs


def _record_ddp_check(ctx: StageContext, uri: str, run_id: str, digests: list[str]) -> None:
    """Tag the run with every rank's weight digest after step 1 (all equal under correct DDP)."""
    if not digests:
        return
    tracking.set_tags(uri, run_id, {DDP_TAG: ",".join(d[:16] for d in digests)})
    if len(set(digests)) > 1:
        ctx.console.print("[bold red]warning[/]: ranks held different weights after step 1")


def _params(ctx: StageContext, manifest: Manifest) -> dict[str, object]:
    """The resolved configuration of this stage, flattened for MLflow params."""
    train = ctx.config.train.model_dump(mode="json")
    train["model"] = resolve_model_config(ctx.config.train, manifest).model_dump(mode="json")
    params = tracking.flatten(train, "train.")
    params["name"] = ctx.config.name
    params["data_prep.manifest"] = manifest.location
    return params


def _tags(pipeline: str, manifest: Manifest, train: TrainConfig) -> dict[str, str]:
    """The run's tags, all `nfpipe.*` (MLflow's own `mlflow.*` kept)."""
    tags = {
        "pipeline": pipeline,
        "stage": "train",
        "dataset": manifest.dataset,
        "manifest_fingerprint": manifest.fingerprint,
        "model": train.model.name,
        "workers": str(train.scaling.num_workers),
    }
    commit = tracking.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tracking.nfpipe_tags(tags)


def log_dataset(tracking_uri: str, run_id: str, manifest: Manifest) -> None:
    """The manifest as the run's dataset input: name (its folder), digest (its fingerprint),
    splits and counts, image shape and levels."""
    tracking.log_dataset_input(
        tracking_uri, run_id,
        name=storage.name_of(storage.parent(manifest.location)),
        fingerprint=manifest.fingerprint,
        manifest_location=manifest.location,
        image_shape=tuple(manifest.image_shape),
        profile={"dataset": manifest.dataset, "image_shape": list(manifest.image_shape),
                 "n_bins": manifest.n_bins,
                 "splits": {name: split.count for name, split in manifest.splits.items()}},
    )
