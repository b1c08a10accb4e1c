"""Train-stage fixtures: one prepared digits shard set per session, tiny model configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from data_prep import DataPrepConfig, prepare
from pipeline.config import PipelineConfig
from pipeline.stages.base import StageContext


@pytest.fixture(autouse=True)
def _quick_ray_train(monkeypatch):
    """Ray Train bookkeeping tuned for short test runs (read by TorchTrainer.fit, passed on to
    its controller): poll the workers every 0.25 s instead of 2 s, so a finished or failed
    worker group is noticed sooner, and start no preemption watcher (no spot nodes here)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "0")


@pytest.fixture(scope="session")
def digits_manifest(tmp_path_factory) -> Path:
    """Real shards of scikit-learn's digits, prepared once for all train tests."""
    root = tmp_path_factory.mktemp("digits-shards")
    return prepare(DataPrepConfig(dataset="digits", output_root=root)).resolve()


@pytest.fixture
def make_ctx(tmp_path: Path, mlflow_uri: str, digits_manifest: Path):
    """Build the StageContext the runner would hand the train stage."""

    def make(train: dict[str, Any], name: str = "t") -> StageContext:
        cfg = PipelineConfig.model_validate(
            {
                "name": name,
                "workdir": str(tmp_path / "work"),
                "mlflow": {"tracking_uri": mlflow_uri, "artifact_root": str(tmp_path / "art")},
                "train": train,
            }
        )
        return StageContext(
            config=cfg,
            stage_dir=tmp_path / "work" / "train",
            inputs={"data_prep": {"manifest": str(digits_manifest)}},
            console=Console(width=120),
        )

    return make
