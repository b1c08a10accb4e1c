"""train stage: data-parallel training on Ray Train, tracked in MLflow (see pipeline/train/)."""

from __future__ import annotations

from pathlib import Path

from data_prep import Manifest
from pipeline.cluster import check_visible_on_all_nodes
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs
from pipeline.tracking import absolute_tracking_uri, ensure_experiment
from pipeline.train import tracker
from pipeline.train.config import TrainConfig
from pipeline.train.distributed import FitResult, check_resources, fit, run_name
from pipeline.train.export import export_bundle, history_table
from pipeline.train.loop import TrainJob, resolve_model_config


def run(ctx: StageContext) -> StageOutputs:
    cfg = ctx.config
    manifest_path = Path(ctx.inputs["data_prep"]["manifest"]).resolve()
    manifest = Manifest.load(manifest_path)
    uri = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    storage = _prepare_cluster(ctx, manifest_path, uri)
    name = run_name(cfg.name, cfg.train, manifest.fingerprint)
    run_id = tracker.open_run(uri, ensure_experiment(cfg.mlflow), name, _params(ctx, manifest),
                              _tags(cfg.name, manifest, cfg.train))
    meta = {"dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
            "train_run": name}
    job = TrainJob(str(manifest_path), str(storage / name), uri, run_id, meta)
    ctx.console.print(f"    Ray Train run {name} ({cfg.train.scaling.num_workers} workers) → "
                      f"{storage / name}; MLflow run {run_id}")
    result = _fit_tracked(cfg.train, job, storage, name)
    model_dir = export_bundle(Path(result.best_checkpoint), ctx.stage_dir / "model",
                              {**meta, "run_id": run_id, "checkpoint": result.best_checkpoint})
    tracker.log_artifacts(uri, run_id, model_dir, "model_bundle")
    _record_ddp_check(ctx, uri, run_id, result.summary.get("step1_digests") or [])
    tracker.finish_run(uri, run_id)
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
    check_visible_on_all_nodes([manifest_path.parent, storage, *_local_store(tracking_uri)])
    return storage


def _fit_tracked(train: TrainConfig, job: TrainJob, storage: Path, name: str) -> FitResult:
    """`fit`, marking the MLflow run FAILED (or KILLED on Ctrl-C) when it raises."""
    try:
        return fit(train, job, storage, name)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        tracker.finish_run(job.tracking_uri, job.mlflow_run_id, status)
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
    if "test_bpd_iwae" in final:  # VAE / f-VAE: the importance-weighted bound at the end
        outputs["test_bpd_iwae"] = float(final["test_bpd_iwae"])
    return outputs


def _local_store(tracking_uri: str) -> list[Path]:
    """The folder of a SQLite tracking store (rank 0 writes it from whichever node it is on)."""
    prefix = "sqlite:///"
    return [Path(tracking_uri[len(prefix) :]).parent] if tracking_uri.startswith(prefix) else []


def _record_ddp_check(ctx: StageContext, uri: str, run_id: str, digests: list[str]) -> None:
    """Tag the run with every rank's weight digest after step 1 (all equal under correct DDP)."""
    if not digests:
        return
    tracker.set_tags(uri, run_id, {"ddp.step1_digests": ",".join(d[:16] for d in digests)})
    if len(set(digests)) > 1:
        ctx.console.print("[bold red]warning[/]: ranks held different weights after step 1")


def _params(ctx: StageContext, manifest: Manifest) -> dict[str, object]:
    """The resolved configuration of this stage, flattened for MLflow params."""
    train = ctx.config.train.model_dump(mode="json")
    train["model"] = resolve_model_config(ctx.config.train, manifest).model_dump(mode="json")
    params = tracker.flatten(train, "train.")
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
    commit = tracker.git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags
