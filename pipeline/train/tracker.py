"""MLflow for the train stage: one run per training run, written by one process at a time.

The driver opens (or reopens) the run before the workers start and closes it after; during
training only rank 0 writes, through `MlflowTracker`. A resumed run reuses the same MLflow run
(found by the tag `nfpipe.train_run`), and the tracker drops any (metric, step) already logged,
so an epoch replayed after a worker failure is not logged twice.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RUN_TAG = "nfpipe.train_run"
_BATCH = 1000  # MLflow's limit of metrics per log_batch
_PARAMS_BATCH = 100  # ... and of params per log_batch
_PARAM_MAX = 6000  # characters of one param value


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def open_run(
    tracking_uri: str,
    experiment_id: str,
    train_run: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """The id of the MLflow run tagged `train_run`, reopened; created (with params) if new."""
    return reopen_or_create(
        tracking_uri, experiment_id, {RUN_TAG: train_run}, train_run, params, tags
    )


def find_run(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of the run carrying all `tags`, or None."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client(tracking_uri).search_runs([experiment_id], filter_string=where, max_results=1)
    return found[0].info.run_id if found else None


def reopen_or_create(
    tracking_uri: str,
    experiment_id: str,
    identity: Mapping[str, str],
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """The run whose tags include `identity`, set RUNNING again (a resumed run), else a new run
    with those tags plus `tags`, and `params` logged once."""
    run_id = find_run(tracking_uri, experiment_id, identity)
    mlflow = client(tracking_uri)
    if run_id is not None:
        mlflow.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow.create_run(experiment_id, tags={**identity, **tags}, run_name=run_name)
    log_params(tracking_uri, run.info.run_id, params)
    return run.info.run_id


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    client(tracking_uri).set_terminated(run_id, status=status)


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    mlflow = client(tracking_uri)
    for key, value in tags.items():
        mlflow.set_tag(run_id, key, value)


def log_artifacts(tracking_uri: str, run_id: str, local_dir: Path, artifact_path: str) -> None:
    client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches, each value cut to what MLflow stores."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
    mlflow = client(tracking_uri)
    for i in range(0, len(items), _PARAMS_BATCH):
        mlflow.log_batch(run_id, params=items[i : i + _PARAMS_BATCH])


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3} (lists and tuples kept as one value)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the git checkout at `cwd`, or None outside a repository / without commits."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class MlflowTracker:
    """Rank 0's writer: buffers metrics, logs each (key, step) at most once per run."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = client(tracking_uri)
        self._pending: list[tuple[str, float, int]] = []
        self._last_step = self._logged_steps()

    def _logged_steps(self) -> dict[str, int]:
        """Highest step already stored per metric key (non-empty only on a resumed run)."""
        keys = self._client.get_run(self.run_id).data.metrics
        return {
            key: max(m.step for m in self._client.get_metric_history(self.run_id, key))
            for key in keys
        }

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics at `step`; written by the next `flush`."""
        for key, value in metrics.items():
            if step > self._last_step.get(key, -1):
                self._pending.append((key, float(value), step))

    def flush(self) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, s) for k, v, s in self._pending]
        for i in range(0, len(batch), _BATCH):
            self._client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])
        for key, _, step in self._pending:
            self._last_step[key] = max(step, self._last_step.get(key, -1))
        self._pending.clear()

    def log_files(self, paths: Iterable[Path], artifact_path: str) -> None:
        for path in paths:
            self._client.log_artifact(self.run_id, str(path), artifact_path)
