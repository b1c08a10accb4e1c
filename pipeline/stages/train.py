"""train stage: data-parallel training on Ray Train, tracked in MLflow (see pipeline/train/)."""

from __future__ import annotations

from pathlib import Path

from data_prep import Manifest
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs
from pipeline.tracking import absolute_tracking_uri, ensure_experiment
from pipeline.train import tracker
from pipeline.train.config import TrainConfig
from pipeline.train.distributed import fit, run_name
from pipeline.train.export import export_bundle, history_table
from pipeline.train.loop import TrainJob, resolve_model_config


def run(ctx: StageContext) -> StageOutputs:
    cfg = ctx.config
    manifest_path = Path(ctx.inputs["data_prep"]["manifest"]).resolve()
    manifest = Manifest.load(manifest_path)
    ensure_ray(cfg.ray)
    uri = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(cfg.mlflow)
    name = run_name(cfg.name, cfg.train, manifest.fingerprint)
    storage = Path(cfg.train.storage_path or Path(cfg.workdir) / "ray_results").resolve()
    run_id = tracker.open_run(
        uri, experiment_id, name, _params(ctx, manifest), _tags(cfg.name, manifest, cfg.train)
    )
    meta = {"dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
            "train_run": name}
    job = TrainJob(str(manifest_path), str(storage / name), uri, run_id, meta)
    ctx.console.print(f"    Ray Train run {name} ({cfg.train.scaling.num_workers} workers) → "
                      f"{storage / name}; MLflow run {run_id}")
    try:
        result = fit(cfg.train, job, storage, name)
    except BaseException as err:
        tracker.finish_run(uri, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else
                           "FAILED")
        raise
    model_dir = export_bundle(Path(result.best_checkpoint), ctx.stage_dir / "model",
                              {**meta, "run_id": run_id, "checkpoint": result.best_checkpoint})
    tracker.log_artifacts(uri, run_id, model_dir, "model_bundle")
    tracker.finish_run(uri, run_id)
    ctx.console.print(history_table(result.summary.get("history", []), name))
    outputs: StageOutputs = {
        "model_dir": str(model_dir),
        "checkpoint": result.best_checkpoint,
        "run_id": run_id,
        "test_bpd": float(result.best_metrics["test_bpd"]),
        "best_epoch": int(result.best_metrics["epoch"]),
        "ray_run": result.run_path,
    }
    if "test_bpd_iwae" in result.summary.get("final", {}):
        outputs["test_bpd_iwae"] = float(result.summary["final"]["test_bpd_iwae"])
    return outputs


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
