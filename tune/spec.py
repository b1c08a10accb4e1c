"""What a sweep is, resolved by the orchestrator into plain typed values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep import storage
from train.config import TrainConfig
from train.loop import train as train_loop
from tune.config import TuneConfig

TrainFn = Callable[..., dict[str, Any]]  # loop.train's signature: (cfg, job, world, report, resume)


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: its settings, the base train config, and where it reads and writes.

    `name` is deterministic (from the stage fingerprint), so running the same spec again finds
    the interrupted Tune experiment at `storage / name` and continues it. `train_fn` is the
    training function an in-process trial runs (the train stage's own loop).
    """

    name: str
    pipeline: str  # the pipeline's name, for MLflow tags
    tune: TuneConfig
    train: TrainConfig  # every trial starts from this config
    manifest_path: str | Path  # an absolute path or a URL
    out_dir: Path  # the stage folder: model bundle and leaderboard files
    storage: str  # Tune's storage_path: an absolute path or a URL
    tracking_uri: str
    experiment: str  # MLflow experiment of the parent and child runs
    artifact_root: str | Path  # artifact folder or URL of a local MLflow store
    train_fn: TrainFn = train_loop

    @property
    def exp_dir(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def train_runs(self) -> str:
        """Where trials with a TorchTrainer keep their Train runs."""
        return storage.join(self.exp_dir, "train_runs")
