"""A compact live table of the sweep's trials on the console (a Tune driver callback).

Tune's own reporter is switched off (`verbose=0`); this one shows one row per trial: status,
epochs done, the last and best metric, and the searched values. On a terminal it redraws in
place; elsewhere (CI, Ray job logs) it prints one line per finished trial and the final table.
The tune stage hands it to `tune.sweep.run_sweep` (`trial_table`); the sweep itself draws
nothing.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline.progress import clock_text
from tune.config import TuneConfig

# This driver process's display. Module state because Tune pickles its callbacks with the
# experiment: a restored sweep runs the unpickled table, not one this process made.
_STATE: dict[str, Any] = {"console": None, "live": None}


@contextlib.contextmanager
def trial_table(console: Console, cfg: TuneConfig) -> Iterator[list[Callback]]:
    """The sweep's display callbacks (the live table; none when `tune.verbose` is off),
    drawing on `console` until the block ends, finished, failed or interrupted."""
    _STATE["console"] = console
    try:
        yield [LiveTrialTable(cfg.metric, cfg.mode, cfg.max_t, list(cfg.space),
                              num_samples=cfg.num_samples)] if cfg.verbose else []
    finally:
        stop_live()


def stop_live() -> None:
    """End the live display if one is running (also after a failed or interrupted fit)."""
    live = _STATE.get("live")
    if live is not None:
        live.stop()
        _STATE["live"] = None


class LiveTrialTable(Callback):
    """Status, epochs and best metric of every trial, refreshed at most every `period_s`."""

    def __init__(
        self, metric: str, mode: str, max_t: int, params: list[str], period_s: float = 1.0,
        num_samples: int | None = None,
    ):
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.params = params
        self.period_s = period_s
        self.num_samples = num_samples
        self._best: dict[str, float] = {}
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._finished = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_best"], state["_last_draw"], state["_finished"] = {}, 0.0, 0
        return state

    @property
    def console(self) -> Console:
        if _STATE["console"] is None:
            _STATE["console"] = Console()
        return _STATE["console"]

    def setup(self, **info) -> None:
        self._started = time.monotonic()  # this process's share of the sweep (after a restore)
        stop_live()
        if self.console.is_terminal:
            _STATE["live"] = Live(console=self.console, auto_refresh=False, transient=True)
            _STATE["live"].start()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            best = self._best.get(trial.trial_id)
            better = best is None or (value < best if self.mode == "min" else value > best)
            if better:
                self._best[trial.trial_id] = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._announce(trial, "done" if epochs >= self.max_t else f"stopped @{epochs}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._announce(trial, "error")

    def on_step_end(self, iteration, trials, **info) -> None:
        live = _STATE.get("live")
        if live is None or time.monotonic() - self._last_draw < self.period_s:
            return
        self._last_draw = time.monotonic()
        live.update(self.table(trials), refresh=True)

    def on_experiment_end(self, trials, **info) -> None:
        stop_live()

    def _status(self, trial) -> str:
        status = str(trial.status).lower()
        if status == "terminated":
            epochs = int((trial.last_result or {}).get("epoch", 0))
            return "done" if epochs >= self.max_t else f"stopped @{epochs}"
        return status

    def _announce(self, trial, status: str) -> None:
        self._finished += 1
        best = self._best.get(trial.trial_id, math.nan)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self.console.print(
            f"    trial {trial.trial_id} {status:<10} {epochs}/{self.max_t} epochs, "
            f"best {self.metric} {best:.4f}: {_values(trial, self.params)}  "
            f"[{self.clock()}]",
            highlight=False,
        )

    def clock(self) -> str:
        """'2/4 trials, elapsed 0:35, eta 0:35' (the ETA assumes the rest take as long as
        the finished ones did, an upper bound when ASHA stops some early)."""
        elapsed = time.monotonic() - self._started
        total = self.num_samples
        text = f"{self._finished}/{total or '?'} trials, elapsed {clock_text(elapsed)}"
        if total and self._finished:
            text += f", eta {clock_text(elapsed / self._finished * max(total - self._finished, 0))}"
        return text

    def table(self, trials: list) -> Table:
        table = Table(title=f"tune: {len(trials)} trials ({self.clock()})", title_justify="left",
                      box=None)
        for column in ("trial", "status", "epochs", f"best {self.metric}", "config"):
            table.add_column(column)
        for trial in trials:
            best = self._best.get(trial.trial_id, (trial.last_result or {}).get(self.metric))
            epochs = int((trial.last_result or {}).get("epoch", 0))
            table.add_row(
                trial.trial_id,
                self._status(trial),
                f"{epochs}/{self.max_t}",
                f"{best:.4f}" if best is not None else "",
                _values(trial, self.params),
            )
        return table


def _values(trial, params: list[str]) -> str:
    config = trial.config or {}
    parts = []
    for path in params:
        value = config.get(path)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{path.split('.')[-1]}={shown}")
    return " ".join(parts)
