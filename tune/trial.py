"""What runs inside one Tune trial: the train stage's own loop, reporting to Tune.

Two compositions, as Ray Train V2 recommends for Train inside Tune:

- `workers_per_trial == 1`: the trial process itself runs `pipeline.train.loop.train` as a
  single-rank job (no process group), with `cpus_per_trial` torch threads.
- `workers_per_trial > 1`: the trial function is a driver that fits a `TorchTrainer` with the
  train stage's `train_worker`; `TuneReportCallback` forwards rank 0's reports to Tune. The
  Train run is named after the trial, so a restored trial resumes its Train run.

Either way every epoch reports the loop's metrics (test_bpd included) so the scheduler can
stop weak trials, and nothing here writes to MLflow: the Tune driver is the only writer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.train.config import TrainConfig
from pipeline.train.loop import Metrics, TrainJob
from tune.config import TuneConfig
from tune.space import overrides_of, trial_train_config

ATTEMPTS_FILE = "attempts.jsonl"  # one line per start of a trial (restores included)


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled overrides (plain values: crosses to Ray)."""

    tune: dict[str, Any]  # TuneConfig.model_dump(mode="json")
    train: dict[str, Any]  # the base TrainConfig.model_dump(mode="json")
    manifest_path: str
    bundle_meta: dict[str, Any]
    train_storage: str  # where per-trial TorchTrainer runs live (workers_per_trial > 1)


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
        _train_in_process(train, job, tune_cfg.cpus_per_trial)
    else:
        _train_with_trainer(train, job, Path(setup.train_storage), f"trial-{trial_id}")


def _train_in_process(train: TrainConfig, job: TrainJob, threads: int) -> None:
    import ray.tune

    from pipeline.train import checkpoint
    from pipeline.train.ddp import WorkerInfo
    from pipeline.train.loop import train as train_loop

    resume = None
    latest = ray.tune.get_checkpoint()
    if latest is not None:
        with latest.as_directory() as folder:
            resume = checkpoint.load_state(Path(folder))
    _record_attempt(job.run_dir, resume)
    device = "cuda:0" if train.scaling.use_gpu else "cpu"
    world = WorkerInfo(rank=0, world_size=1, device=device, threads=threads)
    train_loop(train, job, world, report_to_tune, resume=resume)


def report_to_tune(metrics: Metrics, checkpoint_dir: Path | None) -> None:
    """The loop's reporter in a trial: metrics every epoch, the checkpoint persisted now."""
    import ray.tune

    checkpoint = (
        ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    )
    try:
        ray.tune.report(dict(metrics), checkpoint=checkpoint)
    except SystemExit:
        # The scheduler stopped this trial while its (daemon) thread waited in report. Unwinding
        # now would free torch tensors while the actor's interpreter shuts down, which aborts
        # the process inside torch's GIL handling; instead the thread parks until the exit.
        threading.Event().wait()


def _train_with_trainer(train: TrainConfig, job: TrainJob, storage: Path, name: str) -> None:
    """A data-parallel Train run as the trial; this function is its driver (1 Tune bundle)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.distributed import build_trainer
    from pipeline.train.loop import NonFiniteLossError

    _record_attempt(job.run_dir, None)
    trainer = build_trainer(train, job, storage, name, callbacks=[TuneReportCallback()])
    summary = trainer.fit().return_value or {}
    if summary.get("status") == "nonfinite":
        raise NonFiniteLossError(summary["message"])


def _record_attempt(run_dir: str | None, resume: dict[str, Any] | None) -> None:
    """Append one line per start to the trial folder (how restore tests see re-runs)."""
    if run_dir is None:
        return
    start_epoch = int(resume["counters"]["epoch"]) if resume else 0
    path = Path(run_dir) / ATTEMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({"start_epoch": start_epoch, "time": time.time()}) + "\n")


def read_attempts(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The starts `_record_attempt` wrote for one trial (empty when it never started)."""
    path = Path(trial_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
