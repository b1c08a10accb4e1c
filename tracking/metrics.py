"""A buffered metrics writer that logs each (metric, step) of a run at most once."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tracking.media import log_images
from tracking.store import client

METRICS_BATCH = 1000  # MLflow's limit of metrics per log_batch


class MlflowTracker:
    """One writer of one run: buffers metrics, drops (key, step) pairs the run already holds.

    A resumed run (a worker group restarted from a checkpoint, a restored sweep) replays
    epochs; their metrics are not logged twice.
    """

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
        for i in range(0, len(batch), METRICS_BATCH):
            self._client.log_batch(self.run_id, metrics=batch[i : i + METRICS_BATCH])
        for key, _, step in self._pending:
            self._last_step[key] = max(step, self._last_step.get(key, -1))
        self._pending.clear()

    def log_files(self, paths: Iterable[Path], artifact_path: str) -> None:
        for path in paths:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_images(self, paths: Iterable[Path], step: int) -> None:
        """PNG files as MLflow images at `step` (see `tracking.media`)."""
        log_images(self._client, self.run_id, paths, step)
