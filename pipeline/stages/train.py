"""train stage: data-parallel training on Ray Train, tracked in MLflow (see train/)."""

from __future__ import annotations

from pathlib import Path

import tracking
from data_prep import Manifest
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs
from train.cluster import check_visible_on_all_nodes
from train.config import TrainConfig
from train.distributed import FitResult, check_resources, fit, run_name
from train.export import export_bundle, history_table
from train.hooks import NO_HOOKS, TrainHooks
from train.loop import TrainJob, resolve_model_config

RUN_TAG = "nfpipe.train_run"  # the MLflow run of a Ray Train run, found again on resume


def run(ctx: StageContext, hooks: TrainHooks = NO_HOOKS) -> StageOutputs:
    """Train (or resume) the configured model; `hooks` inject faults in tests."""
    cfg = ctx.config
    manifest_path = Path(ctx.inputs["data_prep"]["manifest"]).resolve()
    manifest = Manifest.load(manifest_path)
    uri = ctx.tracking_uri
    storage = _prepare_cluster(ctx, manifest_path, uri)
    name = run_name(cfg.name, cfg.train, manifest.fingerprint)
    run_id = tracking.reopen_or_create(uri, ctx.experiment_id(), {RUN_TAG: name}, name,
                                       _params(ctx, manifest), _tags(cfg.name, manifest, cfg.train))
    meta = {"dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
            "train_run": name}
    job = TrainJob(str(manifest_path), str(storage / name), uri, run_id, meta, hooks=hooks)
    ctx.console.print(f"    Ray Train run {name} ({cfg.train.scaling.num_workers} workers) → "
                      f"{storage / name}; MLflow run {run_id}")
    result = _fit_tracked(cfg.train, job, storage, name)
    model_dir = export_bundle(Path(result.best_checkpoint), ctx.stage_dir / "model",
                              {**meta, "run_id": run_id, "checkpoint": result.best_checkpoint})
    tracking.log_artifacts(uri, run_id, model_dir, "model_bundle")
    _record_ddp_check(ctx, uri, run_id, result.summary.get("step1_digests") or [])
    tracking.finish_run(uri, run_id)
    ctx.console.print(history_table(result.summary.get("history", []), name))
    return _outputs(result, model_dir, run_id)


def _prepare_cluster(ctx: StageContext, manifest_path: Path, tracking_uri: str) -> Path:
    """Start or join Ray, check the workers fit and see the shards, storage and SQLite store;
    return the (absolute) Ray Train storage path."""
    cfg = ctx.config
    ensure_ray(cfg.ray)
    if not cfg.ray.address:  # the embedded local Ray cannot grow: fail now, not hang
        check_resources(cfg.train.scaling)
    storage = Path(cfg.train.storage_path or Path(cfg.workdir) / "ray_results").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    store = tracking.sqlite_folder(tracking_uri)
    check_visible_on_all_nodes([manifest_path.parent, storage, *([store] if store else [])])
    return storage


def _fit_tracked(train: TrainConfig, job: TrainJob, storage: Path, name: str) -> FitResult:
    """`fit`, marking the MLflow run FAILED (or KILLED on Ctrl-C) when it raises."""
    try:
        return fit(train, job, storage, name)
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
    tracking.set_tags(uri, run_id, {"ddp.step1_digests": ",".join(d[:16] for d in digests)})
    if len(set(digests)) > 1:
        ctx.console.print("[bold red]warning[/]: ranks held different weights after step 1")


def _params(ctx: StageContext, manifest: Manifest) -> dict[str, object]:
    """The resolved configuration of this stage, flattened for MLflow params."""
    train = ctx.config.train.model_dump(mode="json")
    train["model"] = resolve_model_config(ctx.config.train, manifest).model_dump(mode="json")
    params = tracking.flatten(train, "train.")
    params["name"] = ctx.config.name
    params["data_prep.manifest"] = ctx.inputs["data_prep"]["manifest"]
    return params


def _tags(pipeline: str, manifest: Manifest, train: TrainConfig) -> dict[str, str]:
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
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags
