"""MLflow for a sweep: one parent run, one child run per trial, written by the Tune driver only.

Trials never touch MLflow (a local SQLite store takes one writer): `MlflowTrialLogger` is a Tune
`Callback`, so it runs in the driver and logs each trial's config at its start and its metrics
at every result (step = epoch). Runs are found again by tag, and metrics already stored are
not logged twice (the train stage's `MlflowTracker`), so a restored sweep continues the same
parent and child runs instead of opening new ones. A child run records itself as the train
stage's run does (`tracking.training_run`): the trial's resolved train config as `train.*`
params, the dataset as its input, the git commit among MLflow's context tags.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from data_prep import Manifest
from tracking import MlflowTracker, client, epoch_metrics, reopen_or_create
from tracking.training_run import open_training_run
from train.config import TrainConfig
from train.run_record import dataset_record, resolved_params
from tune.config import TuneConfig
from tune.space import count_parameters, overrides_of, trial_train_config

SWEEP_TAG = "nfpipe.tune_sweep"  # on the parent and every child: the sweep's name
TRIAL_TAG = "nfpipe.tune_trial"  # on a child: the Tune trial id
STATUS_TAG = "nfpipe.trial_status"  # running | completed | stopped early | error
EPOCHS_TAG = "nfpipe.epochs"
STEPS_TAG = "nfpipe.steps"  # optimiser steps the trial has taken (against its LR warmup)
OVERRIDES_TAG = "nfpipe.overrides"  # the trial's searched values, JSON
PARENT_TAG = "mlflow.parentRunId"
# Keys of a Tune result that are bookkeeping, not metrics of the model.
_NOT_METRICS = {
    "epoch", "step", "training_iteration", "time_total_s", "time_this_iter_s", "timestamp",
    "time_since_restore", "iterations_since_restore", "timesteps_since_restore", "pid",
    "done", "timesteps_total", "episodes_total",
}


def open_parent(
    tracking_uri: str,
    experiment_id: str,
    sweep: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """The sweep's parent run, reopened when it exists (a resumed sweep), else created."""
    identity = {SWEEP_TAG: sweep, "nfpipe.role": "sweep"}
    return reopen_or_create(tracking_uri, experiment_id, identity, sweep, params, tags)


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of the sweep (mlflow.entities.Run), oldest first."""
    return client(tracking_uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The model's numbers in a Tune result (the loop's metrics), without Tune's bookkeeping."""
    return {
        key: float(value)
        for key, value in result.items()
        if key not in _NOT_METRICS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


class MlflowTrialLogger(Callback):
    """Tune driver callback: a child run per trial under the sweep's parent run.

    Holds only plain values, so it survives Tune pickling it into the experiment (a restored
    sweep gets this object back and reconnects lazily).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep: str,
        tune_cfg: dict[str, Any],
        base_train: dict[str, Any],
        manifest_path: str,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep = sweep
        self.tune_cfg = tune_cfg
        self.base_train = base_train
        self.manifest_path = manifest_path
        self._trackers: dict[str, MlflowTracker] = {}
        self._client = None
        self._manifest: Manifest | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trackers"], state["_client"] = {}, None  # clients do not pickle; reopened
        state["_manifest"] = None  # read again from manifest_path
        return state

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.load(self.manifest_path)
        return self._manifest

    @property
    def mlflow(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    # --- Tune hooks (driver side) ---
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._tracker(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        tracker = self._tracker(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        tracker.add(epoch_metrics(result_metrics(result)), step=epoch)
        tracker.flush()
        self.mlflow.set_tag(tracker.run_id, EPOCHS_TAG, str(epoch))
        if "step" in result:
            self.mlflow.set_tag(tracker.run_id, STEPS_TAG, str(int(result["step"])))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        status = "completed" if epochs >= self.tune_cfg["max_t"] else "stopped early"
        self._finish(trial, status, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "error", "FAILED")

    # --- runs ---
    def _tracker(self, trial) -> MlflowTracker:
        tracker = self._trackers.get(trial.trial_id)
        if tracker is None:
            tracker = MlflowTracker(self.tracking_uri, self._child_run(trial))
            self._trackers[trial.trial_id] = tracker
        return tracker

    def _child_run(self, trial) -> str:
        """The trial's child run, reopened on a restored sweep; params logged once."""
        identity = {SWEEP_TAG: self.sweep, TRIAL_TAG: trial.trial_id}
        tags = {PARENT_TAG: self.parent_run_id, "nfpipe.role": "trial", "nfpipe.stage": "tune",
                OVERRIDES_TAG: json.dumps(self._overrides(trial), sort_keys=True)}
        run_id = open_training_run(self.tracking_uri, self.experiment_id, identity,
                                   f"{self.sweep}-{trial.trial_id}", lambda: self._params(trial),
                                   tags, dataset_record(self.manifest))
        self.mlflow.set_tag(run_id, STATUS_TAG, "running")
        return run_id

    def _overrides(self, trial) -> dict[str, Any]:
        return overrides_of(trial.config, TuneConfig.model_validate(self.tune_cfg).space)

    def _params(self, trial) -> dict[str, Any]:
        """The trial's whole train config as `train.*` (its model resolved for the dataset),
        and its model's parameter count."""
        tune_cfg = TuneConfig.model_validate(self.tune_cfg)
        base = TrainConfig.model_validate(self.base_train)
        train = trial_train_config(base, self._overrides(trial), tune_cfg)
        n_params = count_parameters(train, tuple(self.manifest.image_shape), self.manifest.n_bins)
        return resolved_params(train, self.manifest, **{"model.n_params": n_params})

    def _finish(self, trial, status: str, run_status: str) -> None:
        tracker = self._tracker(trial)
        tracker.flush()
        self.mlflow.set_tag(tracker.run_id, STATUS_TAG, status)
        self.mlflow.set_terminated(tracker.run_id, status=run_status)
