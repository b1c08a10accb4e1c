"""Reporting to Ray and resuming from Ray's latest checkpoint: one path for Ray Train workers
(`api=ray.train`) and Ray Tune trials (`api=ray.tune`), whose APIs have the same shape."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from train import checkpoint

Metrics = dict[str, float]
Reporter = Callable[[Metrics, Path | None], None]


def reporter(api: ModuleType) -> Reporter:
    """The loop's `report(metrics, checkpoint_dir)`: `api.report` with the folder (a temporary
    one: Ray persists it before returning) as an `api.Checkpoint`. Under Ray Train a report is
    a barrier, so every rank calls it equally often."""

    def report(metrics: Metrics, checkpoint_dir: Path | None) -> None:
        folder = str(checkpoint_dir) if checkpoint_dir else None
        saved = api.Checkpoint.from_directory(folder) if folder else None
        try:
            api.report(dict(metrics), checkpoint=saved)
        except SystemExit:
            # Tune stopped this trial while its (daemon) thread waited in report. Unwinding
            # now would free torch tensors while the actor's interpreter shuts down, which
            # aborts the process inside torch's GIL handling; the thread parks until the exit.
            threading.Event().wait()

    return report


def latest_state(api: ModuleType) -> dict[str, Any] | None:
    """The training state of Ray's latest checkpoint of this run or trial (None: a fresh start)."""
    latest = api.get_checkpoint()
    if latest is None:
        return None
    with latest.as_directory() as folder:
        return checkpoint.load_state(Path(folder))
