"""A sweep whose trials ask for GPUs the Ray cluster does not have fails before any trial."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient
from tune_helpers import write_pipeline

from pipeline.config import load_config
from pipeline.stages.tune import sweep_spec
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.space import SearchSpaceError
from tune.sweep import check_gpus, run_sweep


def test_check_gpus_counts_every_worker_of_a_trial():
    train = TrainConfig.model_validate({"scaling": {"num_workers": 2, "use_gpu": True,
                                                    "gpus_per_worker": 0.5}})
    check_gpus(TuneConfig(workers_per_trial=2), train, cluster_gpus=1)
    with pytest.raises(SearchSpaceError, match=r"needs 2 GPU.*workers_per_trial=4.*has 1"):
        check_gpus(TuneConfig(workers_per_trial=4), train, cluster_gpus=1)
    check_gpus(TuneConfig(), train.model_copy(update={"scaling": train.scaling.model_copy(
        update={"use_gpu": False})}), cluster_gpus=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_gpu_trials_on_a_ray_without_gpus_fail_before_any_trial(ray_local, tmp_path,
                                                                shards_root, manifest_path,
                                                                workers):
    path = write_pipeline(tmp_path, shards_root, {"num_samples": 2, "max_t": 1,
                                                  "workers_per_trial": workers})
    cfg = load_config(path, None, ["train.scaling.use_gpu=true",
                                   f"train.scaling.num_workers={workers}"])
    spec = sweep_spec(cfg, manifest_path, tmp_path / "tune", "gpu-less")

    start = time.perf_counter()
    with pytest.raises(SearchSpaceError, match=r"needs \d GPU.*the Ray cluster has 0"):
        run_sweep(spec)
    assert time.perf_counter() - start < 10
    assert MlflowClient(cfg.mlflow.tracking_uri).get_experiment_by_name(
        cfg.mlflow.experiment) is None  # nothing was logged
