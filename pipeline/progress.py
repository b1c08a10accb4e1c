"""Progress on the pipeline's console: the bar of a counted task (`progress_bar`), and the
driver's view of a Ray Train run (`epoch_progress`): one progress bar (a terminal) or one line
per epoch (a log), with elapsed time and ETA, drawn from the JSON lines rank 0 appends per
epoch.

The workers print nothing themselves: their output reaches the driver through Ray's log
forwarding, late and interleaved, so a line could land after the pipeline's summary.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

POLL_S = 0.5


def progress_bar(console: Console, label: str, unit: str = "", *extra: ProgressColumn) -> Progress:
    """A transient bar: `label` (a template: `{task.description}` names each task), the bar,
    done/total `unit`, elapsed time, ETA, then the `extra` columns."""
    units = (TextColumn(unit),) if unit else ()
    return Progress(
        TextColumn(f"    {label}"), BarColumn(), MofNCompleteColumn(), *units,
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), *extra,
        console=console, transient=True,
    )


class EpochProgress:
    """Follows `path` (JSON lines with `epoch`, `epochs`, `train_bpd`, `val_bpd`).

    ETA = seconds per epoch since the first epoch line of this attempt x epochs left (Ray's
    start-up and a resumed run's earlier epochs do not count)."""

    def __init__(self, path: Path, epochs: int, console: Console, label: str = "train"):
        self.path, self.epochs, self.console, self.label = path, epochs, console, label
        self.started = time.monotonic()
        self._offset = path.stat().st_size if path.exists() else 0
        self._first: tuple[int, float] | None = None  # (epoch, time) of the first line seen
        self._bar: Progress | None = None
        self._task = None

    def start(self) -> None:
        if self.console.is_terminal:
            self._bar = progress_bar(self.console, self.label, "epochs",
                                     TextColumn("{task.fields[bpd]}"))
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.epochs, bpd="")

    def stop(self) -> None:
        self.poll()
        if self._bar is not None:
            self._bar.stop()

    def poll(self) -> None:
        """Show every epoch line written since the last poll."""
        for entry in self._new_entries():
            self.show(entry)

    def show(self, entry: dict[str, Any]) -> None:
        epoch = int(entry.get("epoch", 0))
        if self._first is None:
            self._first = (epoch, float(entry.get("time", time.time())))
        bpd = _bpd_text(entry)
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, bpd=bpd)
            return
        elapsed = time.monotonic() - self.started
        self.console.print(
            f"    {self.label} epoch {epoch}/{self.epochs}  step {int(entry.get('step', 0))}  "
            f"{bpd}  "
            f"elapsed {clock_text(elapsed)}  eta {self._eta(epoch, entry)}",
            highlight=False,
        )

    def _eta(self, epoch: int, entry: dict[str, Any]) -> str:
        first_epoch, first_time = self._first or (epoch, 0.0)
        if epoch >= self.epochs:
            return "0:00"
        if epoch <= first_epoch:
            return "?"
        per_epoch = (float(entry.get("time", first_time)) - first_time) / (epoch - first_epoch)
        return clock_text(per_epoch * (self.epochs - epoch))

    def _new_entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open() as handle:
            handle.seek(self._offset)
            text = handle.read()
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits
        self._offset += len(complete.encode())
        entries = []
        for line in complete.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries


@contextlib.contextmanager
def epoch_progress(path: Path, epochs: int, console: Console,
                   label: str = "train") -> Iterator[EpochProgress]:
    """Show the run's epochs while the block runs (a daemon thread polls `path`)."""
    progress = EpochProgress(path, epochs, console, label)
    progress.start()
    done = threading.Event()

    def follow() -> None:
        while not done.wait(POLL_S):
            progress.poll()

    thread = threading.Thread(target=follow, name="nfpipe-epoch-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        done.set()
        thread.join()
        progress.stop()


def _bpd_text(entry: dict[str, Any]) -> str:
    parts = [f"{name} {entry[key]:.4f}" for key, name in (("train_bpd", "train"),
                                                         ("val_bpd", "val"))
             if isinstance(entry.get(key), int | float)]
    return (" ".join(parts) + " bpd") if parts else ""


def clock_text(seconds: float) -> str:
    """0:35, 12:05, 1:02:03"""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
