"""tune stage: a Ray Tune sweep over the train config (see tune/sweep.py).

Composes the sweep from the pipeline config: the sweep's name comes from this stage's
fingerprint, so a re-run after an interruption resumes the same Tune experiment instead of
starting over (`--force` starts a new sweep instead); the trials run the train stage's own
loop.
"""

from __future__ import annotations

from pathlib import Path

from data_prep import Manifest, storage
from data_prep.verify import check_shards
from pipeline.config import PipelineConfig
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs
from pipeline.stages.identity import run_name_for
from pipeline.trial_table import trial_table
from tracking import absolute_tracking_uri
from train.loop import train
from tune.results import as_outputs
from tune.spec import SweepSpec
from tune.sweep import run_sweep, sweep_name


def run(ctx: StageContext) -> StageOutputs:
    manifest_path = ctx.inputs["data_prep"]["manifest"]
    manifest = Manifest.load(manifest_path)
    manifest.require_split("val")  # trials are compared on it
    check_shards(manifest)  # before any trial starts, naming the shard
    name = run_name_for(ctx, sweep_name(ctx.config.name, ctx.fingerprint or "adhoc"))
    ensure_ray(ctx.config.ray)
    spec = sweep_spec(ctx.config, manifest_path, ctx.stage_dir, name)
    with trial_table(ctx.console, ctx.config.tune) as displays:
        result = run_sweep(spec, ctx.console, displays)
    ctx.console.print(
        f"    best trial {result.best_trial_id}: {ctx.config.tune.metric} "
        f"{result.best_value:.4f} at epoch {result.best_epoch} with {result.best_config}"
    )
    return as_outputs(result, manifest)


def sweep_spec(cfg: PipelineConfig, manifest_path: str | Path, out_dir: Path,
               name: str) -> SweepSpec:
    """The sweep of `cfg` on a dataset, writing to `out_dir` (the stage folder).

    Tune's storage is `train.storage_path/tune` when set (object storage or a shared file
    system on a cluster), else the stage folder's `ray_results`.
    """
    out_dir = Path(out_dir).resolve()
    sweeps = (storage.join(storage.absolute(cfg.train.storage_path), "tune")
              if cfg.train.storage_path is not None else str(out_dir / "ray_results"))
    return SweepSpec(
        name=name, pipeline=cfg.name, tune=cfg.tune, train=cfg.train,
        manifest_path=manifest_path, out_dir=out_dir, storage=sweeps,
        tracking_uri=absolute_tracking_uri(cfg.mlflow.tracking_uri),
        experiment=cfg.mlflow.experiment, artifact_root=cfg.mlflow.artifact_root,
        train_fn=train,
    )
