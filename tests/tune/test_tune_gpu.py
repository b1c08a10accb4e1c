"""GPUs of a sweep: what a trial reserves (`tune.gpus_per_trial`: trials sharing a GPU), the
errors for impossible values, and trials asking for GPUs the Ray cluster does not have fail
before any trial."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from tune_helpers import write_pipeline

from pipeline.config import load_config
from pipeline.stages.tune import sweep_spec
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.space import SearchSpaceError, validate_space
from tune.sweep import check_gpus, plan_concurrency, run_sweep, trial_resources

REPO = Path(__file__).resolve().parents[2]


def test_check_gpus_counts_every_worker_of_a_trial():
    train = TrainConfig.model_validate({"scaling": {"num_workers": 2, "use_gpu": True,
                                                    "gpus_per_worker": 0.5}})
    check_gpus(TuneConfig(workers_per_trial=2), train, cluster_gpus=1)
    with pytest.raises(SearchSpaceError, match=r"needs 2 GPU.*workers_per_trial=4.*has 1"):
        check_gpus(TuneConfig(workers_per_trial=4), train, cluster_gpus=1)
    check_gpus(TuneConfig(), train.model_copy(update={"scaling": train.scaling.model_copy(
        update={"use_gpu": False})}), cluster_gpus=0)


def gpu_train(**scaling) -> TrainConfig:
    return TrainConfig.model_validate({"scaling": {"num_workers": 1, "use_gpu": True,
                                                   **scaling}})


def test_gpus_per_trial_reserves_a_fraction_of_a_gpu_for_in_process_trials():
    train = gpu_train(gpus_per_worker=1.0)
    quarter = TuneConfig(gpus_per_trial=0.25, cpus_per_trial=4, num_samples=16)
    assert trial_resources(quarter, train) == {"cpu": 4, "gpu": 0.25}
    assert trial_resources(TuneConfig(), train) == {"cpu": 1, "gpu": 1.0}  # unset: per worker
    assert trial_resources(TuneConfig(gpus_per_trial=2), train) == {"cpu": 1, "gpu": 2}
    cpu_only = train.model_copy(update={"scaling": train.scaling.model_copy(
        update={"use_gpu": False})})
    assert trial_resources(TuneConfig(), cpu_only) == {"cpu": 1}
    # trials at once: 4 per GPU (and never more than the CPUs hold)
    assert plan_concurrency(quarter, train, cluster_cpus=64, cluster_gpus=2) == 8
    assert plan_concurrency(quarter, train, cluster_cpus=8, cluster_gpus=2) == 2
    assert plan_concurrency(TuneConfig(gpus_per_trial=0.3, num_samples=16), train, 64, 1) == 3
    check_gpus(quarter, train, cluster_gpus=0.25)
    with pytest.raises(SearchSpaceError, match=r"needs 0.25 GPU\(s\) \(train.scaling.use_gpu=true, "
                       r"tune.gpus_per_trial=0.25\) and the Ray cluster has 0"):
        check_gpus(quarter, train, cluster_gpus=0)


@pytest.mark.parametrize(("tune", "message"), [
    ({"gpus_per_trial": 0}, "greater than 0"),
    ({"gpus_per_trial": -0.5}, "greater than 0"),
    ({"gpus_per_trial": 1.5}, r"gpus_per_trial=1.5: Ray reserves fractions of one GPU or whole "
                              r"GPUs; use a value <= 1 or a whole number \(1 or 2\)"),
    ({"gpus_per_trial": 0.5, "workers_per_trial": 2},
     r"applies to in-process trials \(workers_per_trial=1\); with workers_per_trial=2 each "
     r"worker reserves train.scaling.gpus_per_worker"),
])
def test_impossible_gpus_per_trial_is_a_config_error(tune, message):
    with pytest.raises(ValidationError, match=message):
        TuneConfig.model_validate(tune)


def test_gpus_per_trial_without_use_gpu_is_refused_before_any_trial():
    cpu_only = TrainConfig.model_validate({"scaling": {"num_workers": 1}})
    quarter = TuneConfig(gpus_per_trial=0.25)
    for check in (lambda: validate_space(quarter, cpu_only),
                  lambda: trial_resources(quarter, cpu_only)):
        with pytest.raises(SearchSpaceError, match=r"tune.gpus_per_trial=0.25 reserves GPUs but "
                           r"train.scaling.use_gpu is false"):
            check()


def test_the_cifar10_sweep_packs_four_trials_on_a_gpu():
    cfg = load_config(REPO / "pipeline.yaml", "cifar10")
    validate_space(cfg.tune, cfg.train)
    assert trial_resources(cfg.tune, cfg.train) == {"cpu": 4, "gpu": 0.25}
    assert plan_concurrency(cfg.tune, cfg.train, cluster_cpus=16, cluster_gpus=1) == 4


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
