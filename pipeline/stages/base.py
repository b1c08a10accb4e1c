"""What a stage function receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tracking import absolute_tracking_uri, ensure_experiment

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

StageOutputs = dict[str, Any]  # JSON-serialisable; paths as strings


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may use: the resolved config, its own folder, upstream outputs."""

    config: PipelineConfig
    stage_dir: Path  # this stage's own output folder, under config.workdir
    inputs: Mapping[str, Mapping[str, Any]]  # outputs of upstream stages, by stage name
    console: Console
    fingerprint: str = ""  # this stage's fingerprint: config + upstream; stable across resumes
    force: bool = False  # `--force`: start afresh (a new Ray run) instead of resuming

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, a relative SQLite path made absolute."""
        return absolute_tracking_uri(self.config.mlflow.tracking_uri)

    def experiment_id(self) -> str:
        """Point MLflow at the store; the id of the pipeline's experiment (created if new)."""
        mlflow = self.config.mlflow
        return ensure_experiment(self.tracking_uri, mlflow.experiment, mlflow.artifact_root)


@dataclass(frozen=True)
class Stage:
    """A node of the pipeline graph.

    `config_of` picks the part of the config this stage depends on: its hash decides whether
    the stage is up to date (together with the fingerprints of upstream stages). `recheck`,
    when given, looks at the recorded outputs of an up-to-date stage and returns why they are
    no longer valid (e.g. a damaged shard), or None.
    """

    name: str
    needs: tuple[str, ...]
    run: Callable[[StageContext], StageOutputs]
    config_of: Callable[[PipelineConfig], Any]
    optional_needs: tuple[str, ...] = ()  # used when they ran, not pulled in when they did not
    tracked: bool = True  # talks to MLflow (the runner checks the server answers first)
    recheck: Callable[[Mapping[str, Any]], str | None] | None = None
