"""MLflow set-up shared by the stages: one tracking URI and experiment per pipeline."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import MlflowConfig


def ensure_experiment(cfg: MlflowConfig) -> str:
    """Point MLflow at `cfg.tracking_uri` and return the experiment id (created if missing).

    With a local SQLite store the artifacts go to `cfg.artifact_root` (made absolute), so runs
    started from other working directories (Ray workers) find them.
    """
    import mlflow

    mlflow.set_tracking_uri(absolute_tracking_uri(cfg.tracking_uri))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not cfg.tracking_uri.startswith(("http://", "https://", "databricks")):
        location = Path(cfg.artifact_root).resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` made absolute, so Ray workers with another cwd use the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri
