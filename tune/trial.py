"""What runs inside one Tune trial: the train stage's own loop, reporting to Tune.

Two compositions, as Ray Train V2 recommends for Train inside Tune:

- `workers_per_trial == 1`: the trial process itself runs the sweep's training function (the
  train stage's `train.loop.train`) as a single-rank job (no process group), with
  `cpus_per_trial` torch threads.
- `workers_per_trial > 1`: the trial function is a driver that fits a `TorchTrainer` with the
  train stage's `train_worker`; `TuneReportCallback` forwards rank 0's reports to Tune. The
  Train run is named after the trial, so a restored trial resumes its Train run.

Either way every epoch reports the loop's metrics (val_bpd included) so the scheduler can
stop weak trials, and nothing here writes to MLflow: the Tune driver is the only writer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from train.config import TrainConfig
from train.loop import TrainJob
from tune.config import TuneConfig
from tune.space import overrides_of, trial_train_config
from tune.spec import TrainFn


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled overrides (plain values: crosses to Ray)."""

    tune: dict[str, Any]  # TuneConfig.model_dump(mode="json")
    train: dict[str, Any]  # the base TrainConfig.model_dump(mode="json")
    manifest_path: str
    bundle_meta: dict[str, Any]
    train_storage: str  # where per-trial TorchTrainer runs live (workers_per_trial > 1)
    train_fn: TrainFn  # what an in-process trial runs (loop.train)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable (wrapped with `tune.with_parameters(setup=…)`)."""
    import ray.tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per checkpoint
    tune_cfg = TuneConfig.model_validate(setup.tune)
    overrides = overrides_of(config, tune_cfg.space)
    train = trial_train_config(TrainConfig.model_validate(setup.train), overrides, tune_cfg)
    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    job = TrainJob(
        manifest_path=setup.manifest_path,
        run_dir=context.get_trial_dir(),
        bundle_meta={**setup.bundle_meta, "trial_id": trial_id, "overrides": overrides},
        verbose=False,
    )
    if tune_cfg.workers_per_trial == 1:
        _train_in_process(setup.train_fn, train, job, tune_cfg.cpus_per_trial)
    else:
        _train_with_trainer(train, job, setup.train_storage, f"trial-{trial_id}")


def _train_in_process(train_fn: TrainFn, train: TrainConfig, job: TrainJob,
                      threads: int) -> None:
    import ray.tune

    from train.ddp import WorkerInfo
    from train.reporting import latest_state, reporter

    resume = latest_state(ray.tune)
    device = "cuda:0" if train.scaling.use_gpu else "cpu"
    world = WorkerInfo(rank=0, world_size=1, device=device, threads=threads)
    train_fn(train, job, world, reporter(ray.tune), resume)


def _train_with_trainer(train: TrainConfig, job: TrainJob, storage: str, name: str) -> None:
    """A data-parallel Train run as the trial; this function is its driver (1 Tune bundle)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from train.distributed import run_trainer

    run_trainer(train, job, storage, name, callbacks=[TuneReportCallback()])

