"""MLflow system metrics (CPU, memory, disk, network, GPU) of the process that trains."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def system_metrics(tracking_uri: str | None, run_id: str | None) -> Iterator[None]:
    """Sample this machine's system metrics into the run (`system/...`) while the block runs.

    MLflow's SystemMetricsMonitor: every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds
    (default 10), resumed at the run's last step after a restart. A no-op without a run."""
    if not (tracking_uri and run_id):
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
