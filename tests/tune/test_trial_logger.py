"""The sweep's MLflow trial logger without Ray: its Tune hooks called with real (stub) Tune
trials, on a real SQLite store. A trial's child run records itself as the train stage's run
does: the resolved train config as `train.*` params, the dataset input, the git commit."""

from __future__ import annotations

from helpers import git_head
from mlflow import MlflowClient
from ray.tune.experiment import Trial
from tune_helpers import TINY_TRAIN

import tracking
from data_prep import Manifest
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.trial_logger import MlflowTrialLogger, open_parent

TUNE = {"space": {"model.steps": [1, 2]}, "num_samples": 2, "max_t": 2, "grace_period": 1}


def test_a_child_run_records_params_dataset_and_commit(tmp_path, manifest_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "sweep-tests", tmp_path / "art")
    parent = open_parent(uri, experiment, "sweep", {}, {})
    tune_cfg = TuneConfig.model_validate(TUNE).model_dump(mode="json")
    train = TrainConfig.model_validate(TINY_TRAIN).model_dump(mode="json")
    logger = MlflowTrialLogger(uri, experiment, parent, "sweep", tune_cfg, train,
                               str(manifest_path))
    trial = Trial("nfpipe_trial", config={"model.steps": 2}, trial_id="t0001", stub=True)

    logger.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):  # as Tune calls it: the result recorded, then the callbacks
        result = {"epoch": epoch, "step": 19 * epoch, "val_bpd": 4.0 - epoch}
        trial.update_last_result(result)
        logger.on_trial_result(epoch, [trial], trial, result)
    logger.on_trial_complete(2, [trial], trial)

    client = MlflowClient(uri)
    (child,) = client.search_runs([experiment], "tags.`nfpipe.role` = 'trial'")
    params, tags = child.data.params, child.data.tags
    manifest = Manifest.load(manifest_path)
    assert params["train.model.steps"] == "2"  # the trial's value over the base config
    assert params["train.model.n_bins"] == str(manifest.n_bins)  # resolved for the dataset
    assert params["train.batch_size"] == "64" and int(params["model.n_params"]) > 0
    (dataset,) = child.inputs.dataset_inputs
    assert manifest.fingerprint.startswith(dataset.dataset.digest)
    assert tags["nfpipe.manifest_fingerprint"] == manifest.fingerprint
    assert tags["mlflow.parentRunId"] == parent and tags["nfpipe.trial_status"] == "completed"
    assert tags["mlflow.source.git.commit"] == git_head()
    assert [m.step for m in client.get_metric_history(child.info.run_id, "bpd/val")] == [1, 2]
    assert child.info.status == "FINISHED"
