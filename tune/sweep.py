"""Run (or resume) a sweep: Ray Tune over the train config, tracked in MLflow, best model out.

```
validate_space ─► parent MLflow run ─► Tuner(run_trial) or Tuner.restore ─► fit
      ─► best trial (lowest reported metric, from its kept checkpoints) ─► model bundle
      ─► leaderboard (csv, md, png) on the parent run, rich table on the console
```

The experiment folder is `{storage}/{name}`, `name` derived from the stage fingerprint: the
same pipeline run finds its interrupted sweep (`Tuner.can_restore`) and continues it; finished
trials are not run again, unfinished and errored ones resume from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from data_prep import Manifest
from pipeline.config import PipelineConfig
from pipeline.train.config import TrainConfig
from pipeline.train.tracker import flatten, git_commit
from tune import progress
from tune.config import TuneConfig
from tune.leaderboard import TrialRow, collect_rows, leaderboard_table, write_leaderboard
from tune.space import SearchSpaceError, to_tune_space, trial_train_config, validate_space
from tune.tracking import MlflowTrialLogger, client, log_params, open_parent
from tune.trial import TrialSetup, run_trial

MODEL_DIR = "model"
_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new engine prints its header even at verbose=0
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # every epoch saves
}
LEADERBOARD_DIR = "leaderboard"


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep leaves (JSON-friendly via `asdict`)."""

    name: str
    experiment_path: str
    best_trial_id: str
    best_config: dict[str, Any]  # the best trial's overrides (dotted path -> value)
    best_test_bpd: float  # the best trial's best reported metric
    best_epoch: int
    checkpoint: str  # the best trial's checkpoint folder with that metric
    model_dir: str  # flows model bundle exported from that checkpoint
    run_id: str  # the best trial's MLflow child run
    parent_run_id: str
    trials: int
    stopped_early: int
    trial_epochs: int  # epochs trained over all trials (the sweep's cost)


def sweep_name(pipeline_name: str, fingerprint: str) -> str:
    """Deterministic experiment name: the same pipeline run resumes the same sweep."""
    return f"{pipeline_name}-tune-{fingerprint[:12]}"


def storage_root(cfg: PipelineConfig, out_dir: Path) -> Path:
    """Tune storage: train.storage_path/tune when set (shared storage), else the stage folder."""
    if cfg.train.storage_path is not None:
        return (Path(cfg.train.storage_path) / "tune").resolve()
    return (Path(out_dir) / "ray_results").resolve()


def trial_cpus(cfg: TuneConfig, train: TrainConfig) -> float:
    """CPUs one trial holds: its own process, plus its TorchTrainer's workers when it has one."""
    if cfg.workers_per_trial == 1:
        return cfg.cpus_per_trial
    return cfg.cpus_per_trial + cfg.workers_per_trial * train.scaling.cpus_per_worker


def plan_concurrency(cfg: TuneConfig, train: TrainConfig, cluster_cpus: float) -> int:
    """Trials at once, so that every running trial's driver AND workers fit on the cluster.

    A trial driving a TorchTrainer holds its CPU while its workers wait for theirs: if the
    drivers take the CPUs the workers need, nothing progresses. So concurrent trials x
    (cpus_per_trial + workers x cpus_per_worker) must fit.
    """
    per_trial = trial_cpus(cfg, train)
    fits = int(cluster_cpus // per_trial)
    need = (
        f"each trial needs {per_trial:g} CPUs (tune.cpus_per_trial={cfg.cpus_per_trial}"
        + (
            f" + tune.workers_per_trial={cfg.workers_per_trial} x "
            f"train.scaling.cpus_per_worker={train.scaling.cpus_per_worker}"
            if cfg.workers_per_trial > 1
            else ""
        )
        + f") and the Ray cluster has {cluster_cpus:g}"
    )
    if fits < 1:
        raise SearchSpaceError(f"tune: no trial fits: {need}; lower them or add CPUs")
    wanted = cfg.max_concurrent_trials or fits
    if cfg.workers_per_trial > 1 and wanted > fits:
        raise SearchSpaceError(
            f"tune.max_concurrent_trials={wanted} would deadlock: {need}, so at most {fits} "
            "trial(s) with their workers fit at once; lower tune.max_concurrent_trials"
        )
    return max(1, min(wanted, fits, cfg.num_samples))


def trial_resources(cfg: TuneConfig, train: TrainConfig) -> dict[str, float]:
    """What Tune reserves per trial (a TorchTrainer's workers reserve their own)."""
    resources: dict[str, float] = {"cpu": cfg.cpus_per_trial}
    if cfg.workers_per_trial == 1 and train.scaling.use_gpu:
        resources["gpu"] = train.scaling.gpus_per_worker
    return resources


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_scheduler(cfg: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    )


def make_search(cfg: TuneConfig, concurrency: int):
    """Random search or Optuna's TPE, seeded, never running more than `concurrency` trials."""
    if cfg.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed))
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)


def build_tuner(trainable, cfg: PipelineConfig, name: str, storage: Path, concurrency: int,
                callbacks: list):
    """A new Tuner for the sweep (every setting that a restore must find again)."""
    from ray import tune

    tune_cfg = cfg.tune
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(tune_cfg.space),
        tune_config=tune.TuneConfig(
            metric=tune_cfg.metric,
            mode=tune_cfg.mode,
            scheduler=make_scheduler(tune_cfg),
            search_alg=make_search(tune_cfg, concurrency),
            num_samples=tune_cfg.num_samples,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_keep,
                checkpoint_score_attribute=tune_cfg.metric,
                checkpoint_score_order=tune_cfg.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=tune_cfg.max_failures),
            verbose=0,  # the live table (tune.progress) replaces Tune's reporter
        ),
    )


def run_sweep(
    cfg: PipelineConfig,
    manifest_path: str | Path,
    out_dir: Path,
    name: str,
    console: Console | None = None,
) -> SweepResult:
    """Run or resume the sweep `name` into `out_dir`; raise SearchSpaceError before any trial."""
    from ray import tune

    from pipeline.ray_session import ensure_ray
    from pipeline.tracking import absolute_tracking_uri, ensure_experiment

    console = console or Console()
    out_dir = Path(out_dir).resolve()
    manifest = Manifest.load(manifest_path)
    validate_space(cfg.tune, cfg.train, tuple(manifest.image_shape), manifest.n_bins)
    ensure_ray(cfg.ray)
    concurrency = plan_concurrency(cfg.tune, cfg.train, _cluster_cpus())
    tracking_uri = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(cfg.mlflow)
    parent = open_parent(tracking_uri, experiment_id, name, _parent_params(cfg),
                         _parent_tags(cfg, manifest))
    storage = storage_root(cfg, out_dir)
    setup = TrialSetup(
        tune=cfg.tune.model_dump(mode="json"),
        train=cfg.train.model_dump(mode="json"),
        manifest_path=str(Path(manifest_path).resolve()),
        bundle_meta={"manifest_fingerprint": manifest.fingerprint, "dataset": manifest.dataset,
                     "sweep": name, "parent_run_id": parent},
        train_storage=str(storage / name / "train_runs"),
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), trial_resources(cfg.tune, cfg.train)
    )
    progress.use_console(console)
    try:
        grid = _fit(trainable, cfg, name, storage, concurrency, tracking_uri, experiment_id,
                    parent, manifest, console)
        result = summarize(grid, cfg, name, storage, out_dir, manifest, tracking_uri,
                           experiment_id, parent, console)
    except BaseException:
        progress.stop_live()
        client(tracking_uri).set_terminated(parent, status="FAILED")
        raise
    return result


def _fit(trainable, cfg, name, storage, concurrency, tracking_uri, experiment_id, parent,
         manifest, console):
    from ray import tune

    exp_dir = storage / name
    if tune.Tuner.can_restore(str(exp_dir)):
        console.print(f"    resuming sweep {name} from {exp_dir}")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        callbacks = [
            MlflowTrialLogger(tracking_uri, experiment_id, parent, name,
                              cfg.tune.model_dump(mode="json"), cfg.train.model_dump(mode="json"),
                              tuple(manifest.image_shape), manifest.n_bins),
            progress.LiveTrialTable(cfg.tune.metric, cfg.tune.mode, cfg.tune.max_t,
                                    list(cfg.tune.space)),
        ]
        console.print(
            f"    sweep {name}: {cfg.tune.num_samples} trials, {cfg.tune.scheduler}, "
            f"{cfg.tune.search} search, {concurrency} at once → {exp_dir}"
        )
        tuner = build_tuner(trainable, cfg, name, storage, concurrency, callbacks)
    with quiet_tune():
        return tuner.fit()


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune's legacy output engine, which `verbose=0` silences (the live table replaces it)."""
    saved = {key: os.environ.get(key) for key in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def _parent_params(cfg: PipelineConfig) -> dict[str, Any]:
    tune_cfg = cfg.tune.model_dump(mode="json")
    space = {f"space.{path}": dist.describe() for path, dist in cfg.tune.space.items()}
    tune_cfg.pop("space")
    return {**{f"tune.{k}": v for k, v in tune_cfg.items()}, **space,
            **{f"train.{k}": v for k, v in flatten(cfg.train.model_dump(mode="json")).items()}}


def _parent_tags(cfg: PipelineConfig, manifest: Manifest) -> dict[str, str]:
    tags = {
        "nfpipe.stage": "tune",
        "nfpipe.pipeline": cfg.name,
        "nfpipe.dataset": manifest.dataset,
        "nfpipe.manifest_fingerprint": manifest.fingerprint,
    }
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


# --- after the fit ---
def trial_checkpoints(result, train_runs: Path, metric: str) -> list[tuple[str, float]]:
    """(folder, metric) of a trial's kept checkpoints.

    In-process trials report their checkpoints to Tune; TorchTrainer trials keep them in
    their Train run (`train_runs/trial-{id}`), each with the model bundle's meta.json.
    """
    kept = [
        (ckpt.path, float(metrics[metric]))
        for ckpt, metrics in (result.best_checkpoints or [])
        if metric in metrics
    ]
    if kept:
        return kept
    trial_id = (result.metrics or {}).get("trial_id")
    found = []
    run_dir = train_runs / f"trial-{trial_id}"
    for meta_path in sorted(run_dir.glob("checkpoint_*/model/meta.json")):
        meta = json.loads(meta_path.read_text())
        if metric in meta:
            found.append((str(meta_path.parent.parent), float(meta[metric])))
    return found


def pick_best(grid, train_runs: Path, metric: str, mode: str) -> tuple[str, str, float]:
    """(trial_id, checkpoint folder, metric) of the best checkpoint of any non-failed trial."""
    sign = 1.0 if mode == "min" else -1.0
    best: tuple[str, str, float] | None = None
    for result in grid:
        if result.error is not None:
            continue
        trial_id = (result.metrics or {}).get("trial_id")
        for path, value in trial_checkpoints(result, train_runs, metric):
            if math.isfinite(value) and (best is None or sign * value < sign * best[2]):
                best = (trial_id, path, value)
    if best is None:
        errors = [str(r.error).splitlines()[0][:200] for r in grid if r.error is not None]
        raise RuntimeError(
            f"no trial of the sweep produced a checkpoint with a finite {metric}"
            + (f"; {len(errors)} trial(s) failed, e.g. {errors[0]}" if errors else "")
        )
    return best


def export_model(checkpoint: str, out_dir: Path, meta: dict[str, Any]) -> Path:
    """The checkpoint's model bundle re-saved (flows.io) with the sweep's meta."""
    from flows.io import load_meta, load_model, save_model
    from pipeline.train.checkpoint import model_bundle

    source = model_bundle(Path(checkpoint))
    target = out_dir / MODEL_DIR
    if target.exists():
        shutil.rmtree(target)
    save_model(load_model(source), target, {**load_meta(source), **meta})
    return target


def summarize(grid, cfg: PipelineConfig, name: str, storage: Path, out_dir: Path,
              manifest: Manifest, tracking_uri: str, experiment_id: str, parent: str,
              console: Console) -> SweepResult:
    """Best trial, model bundle, leaderboard on the parent run; close the parent run."""
    tune_cfg = cfg.tune
    trial_id, checkpoint, value = pick_best(grid, storage / name / "train_runs",
                                            tune_cfg.metric, tune_cfg.mode)
    rows = collect_rows(tracking_uri, experiment_id, parent, tune_cfg.metric, tune_cfg.mode)
    best_row = next(row for row in rows if row.trial_id == trial_id)
    best_epoch = int(json.loads((Path(checkpoint) / "model" / "meta.json").read_text())["epoch"])
    train = trial_train_config(cfg.train, best_row.overrides, tune_cfg)
    model_dir = export_model(checkpoint, out_dir, {
        "source": "tune", "sweep": name, "trial_id": trial_id, "run_id": best_row.run_id,
        "parent_run_id": parent, "manifest_fingerprint": manifest.fingerprint,
        "dataset": manifest.dataset, "best_config": best_row.overrides,
        tune_cfg.metric: value, "epoch": best_epoch, "train_config": train.model_dump(mode="json"),
    })
    result = SweepResult(
        name=name,
        experiment_path=str(storage / name),
        best_trial_id=trial_id,
        best_config=best_row.overrides,
        best_test_bpd=value,
        best_epoch=best_epoch,
        checkpoint=str(checkpoint),
        model_dir=str(model_dir),
        run_id=best_row.run_id,
        parent_run_id=parent,
        trials=len(rows),
        stopped_early=sum(row.status == "stopped early" for row in rows),
        trial_epochs=sum(row.epochs for row in rows),
    )
    _log_to_parent(result, rows, cfg, out_dir, tracking_uri)
    console.print(leaderboard_table(rows, tune_cfg.metric, tune_cfg.mode,
                                    f"leaderboard: {name} ({result.trial_epochs} trial-epochs)"))
    return result


def _log_to_parent(result: SweepResult, rows: list[TrialRow], cfg: PipelineConfig,
                   out_dir: Path, tracking_uri: str) -> None:
    from mlflow.entities import Metric

    metric, mode = cfg.tune.metric, cfg.tune.mode
    board_dir = out_dir / LEADERBOARD_DIR
    files = write_leaderboard(rows, board_dir, metric, mode)
    best_file = board_dir / "best_config.json"
    train = trial_train_config(cfg.train, result.best_config, cfg.tune)
    best_file.write_text(json.dumps({
        "trial_id": result.best_trial_id, "run_id": result.run_id,
        "overrides": result.best_config, metric: result.best_test_bpd,
        "epoch": result.best_epoch, "train": train.model_dump(mode="json"),
    }, indent=2, sort_keys=True))
    mlflow = client(tracking_uri)
    for path in [*files, best_file]:
        mlflow.log_artifact(result.parent_run_id, str(path), LEADERBOARD_DIR)
    existing = mlflow.get_run(result.parent_run_id).data.params
    best_params = {f"best.{k}": v for k, v in result.best_config.items()
                   if f"best.{k}" not in existing}
    log_params(result.parent_run_id, tracking_uri, best_params)
    now = int(time.time() * 1000)
    mlflow.log_batch(result.parent_run_id, metrics=[
        Metric(f"best_{metric}", result.best_test_bpd, now, 0),
        Metric("trials", result.trials, now, 0),
        Metric("stopped_early", result.stopped_early, now, 0),
        Metric("trial_epochs", result.trial_epochs, now, 0),
    ])
    for key, value in {"nfpipe.best_run_id": result.run_id,
                       "nfpipe.best_trial": result.best_trial_id}.items():
        mlflow.set_tag(result.parent_run_id, key, value)
    mlflow.set_terminated(result.parent_run_id, status="FINISHED")


def as_outputs(result: SweepResult, manifest: Manifest) -> dict[str, Any]:
    """The stage's outputs (docs/contracts.md), JSON-friendly."""
    outputs = asdict(result)
    outputs["manifest_fingerprint"] = manifest.fingerprint
    return outputs
