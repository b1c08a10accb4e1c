"""After the fit: the best trial and its checkpoint, the model bundle, the parent run's record.

The best trial is the one with the lowest reported metric (highest for mode max) over all its
epochs; trials that failed are not candidates. Every report carried a checkpoint and the best
one is always kept, so the best trial's best checkpoint is on disk.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console

from data_prep import Manifest, storage
from tracking import client, epoch_metric, log_params
from train.distributed import as_location
from train.export import export_bundle
from tune.leaderboard import TrialRow, collect_rows, leaderboard_table, write_leaderboard
from tune.space import trial_train_config
from tune.spec import SweepSpec

MODEL_DIR = "model"
LEADERBOARD_DIR = "leaderboard"


@dataclass(frozen=True)
class Sweep:
    """One running sweep: its spec, dataset, MLflow experiment and parent run, console."""

    spec: SweepSpec
    manifest: Manifest
    experiment_id: str
    parent_run_id: str
    console: Console


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep leaves (JSON-friendly via `asdict`)."""

    name: str
    experiment_path: str
    best_trial_id: str
    best_config: dict[str, Any]  # the best trial's overrides (dotted path -> value)
    metric: str  # what the sweep ranked trials by (tune.metric)
    best_value: float  # the best trial's best reported `metric`
    best_epoch: int
    checkpoint: str  # the best trial's checkpoint folder with that metric
    model_dir: str  # flows model bundle exported from that checkpoint
    run_id: str  # the best trial's MLflow child run
    parent_run_id: str
    trials: int
    stopped_early: int
    trial_epochs: int  # epochs trained over all trials (the sweep's cost)


def trial_checkpoints(result, train_runs: str, metric: str) -> list[tuple[str, float]]:
    """(folder, metric) of a trial's kept checkpoints.

    In-process trials report their checkpoints to Tune; TorchTrainer trials keep them in
    their Train run (`train_runs/trial-{id}`), each with the model bundle's meta.json.
    """
    kept = [
        (as_location(ckpt.filesystem, ckpt.path), float(metrics[metric]))
        for ckpt, metrics in (result.best_checkpoints or [])
        if metric in metrics
    ]
    if kept:
        return kept
    trial_id = (result.metrics or {}).get("trial_id")
    found = []
    pattern = storage.join(train_runs, f"trial-{trial_id}", "checkpoint_*", "model", "meta.json")
    for meta_path in storage.glob(pattern):
        meta = json.loads(storage.read_bytes(meta_path))
        if metric in meta:
            found.append((storage.parent(storage.parent(meta_path)), float(meta[metric])))
    return found


def pick_best(grid, train_runs: str, metric: str, mode: str) -> tuple[str, str, float]:
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


def summarize(grid, sweep: Sweep) -> SweepResult:
    """Best trial, model bundle, leaderboard on the parent run; close the parent run."""
    tune_cfg = sweep.spec.tune
    trial_id, checkpoint, value = pick_best(grid, sweep.spec.train_runs, tune_cfg.metric,
                                            tune_cfg.mode)
    rows = collect_rows(sweep.spec.tracking_uri, sweep.experiment_id, sweep.parent_run_id,
                        tune_cfg.metric, tune_cfg.mode)
    best_row = next((row for row in rows if row.trial_id == trial_id), None)
    if best_row is None:
        raise RuntimeError(f"best trial {trial_id} has no MLflow child run under "
                           f"{sweep.parent_run_id}")
    meta = json.loads(storage.read_bytes(storage.join(checkpoint, "model", "meta.json")))
    best_epoch = int(meta["epoch"])
    train = trial_train_config(sweep.spec.train, best_row.overrides, tune_cfg)
    model_dir = export_bundle(checkpoint, sweep.spec.out_dir / MODEL_DIR, {
        "source": "tune", "sweep": sweep.spec.name, "trial_id": trial_id, "run_id": best_row.run_id,
        "parent_run_id": sweep.parent_run_id, "dataset": sweep.manifest.dataset,
        "manifest_fingerprint": sweep.manifest.fingerprint, "best_config": best_row.overrides,
        tune_cfg.metric: value, "epoch": best_epoch, "train_config": train.model_dump(mode="json"),
    })
    result = SweepResult(
        name=sweep.spec.name,
        experiment_path=sweep.spec.exp_dir,
        best_trial_id=trial_id,
        best_config=best_row.overrides,
        metric=tune_cfg.metric,
        best_value=value,
        best_epoch=best_epoch,
        checkpoint=str(checkpoint),
        model_dir=str(model_dir),
        run_id=best_row.run_id,
        parent_run_id=sweep.parent_run_id,
        trials=len(rows),
        stopped_early=sum(row.status == "stopped early" for row in rows),
        trial_epochs=sum(row.epochs for row in rows),
    )
    log_to_parent(result, rows, sweep)
    title = f"leaderboard: {sweep.spec.name} ({result.trial_epochs} trial-epochs)"
    sweep.console.print(leaderboard_table(rows, tune_cfg.metric, tune_cfg.mode, title))
    warming = [row.trial_id for row in rows if row.warming_up]
    if warming:
        sweep.console.print(f"    [yellow]still warming up[/] when they stopped (never trained "
                            f"at their own lr): {', '.join(warming)}")
    return result


def log_to_parent(result: SweepResult, rows: list[TrialRow], sweep: Sweep) -> None:
    """Leaderboard files, best config (params + JSON), summary metrics; FINISHED."""
    from mlflow.entities import Metric

    spec, tracking_uri = sweep.spec, sweep.spec.tracking_uri
    metric, mode = spec.tune.metric, spec.tune.mode
    board_dir = sweep.spec.out_dir / LEADERBOARD_DIR
    files = write_leaderboard(rows, board_dir, metric, mode)
    best_file = board_dir / "best_config.json"
    train = trial_train_config(spec.train, result.best_config, spec.tune)
    best_file.write_text(json.dumps({
        "trial_id": result.best_trial_id, "run_id": result.run_id,
        "overrides": result.best_config, metric: result.best_value,
        "epoch": result.best_epoch, "train": train.model_dump(mode="json"),
    }, indent=2, sort_keys=True))
    mlflow = client(tracking_uri)
    for path in [*files, best_file]:
        mlflow.log_artifact(result.parent_run_id, str(path), LEADERBOARD_DIR)
    existing = mlflow.get_run(result.parent_run_id).data.params
    best_params = {f"best.{k}": v for k, v in result.best_config.items()
                   if f"best.{k}" not in existing}
    log_params(tracking_uri, result.parent_run_id, best_params)
    now = int(time.time() * 1000)
    mlflow.log_batch(result.parent_run_id, metrics=[
        Metric(f"{epoch_metric(metric)}_best", result.best_value, now, 0),
        Metric("sweep/trials", result.trials, now, 0),
        Metric("sweep/stopped_early", result.stopped_early, now, 0),
        Metric("sweep/trial_epochs", result.trial_epochs, now, 0),
        Metric("sweep/still_warming_up", sum(row.warming_up for row in rows), now, 0),
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
