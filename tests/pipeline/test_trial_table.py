"""The tune stage's live table: shown only with `tune.verbose`, and never left drawing after the
sweep ends, even when it fails."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pipeline import trial_table as table_module
from pipeline.trial_table import LiveTrialTable, trial_table
from tune.config import TuneConfig

SPACE = {"optim.lr": [1e-3, 2e-3]}


def test_verbose_off_shows_nothing():
    with trial_table(Console(quiet=True), TuneConfig(space=SPACE, verbose=False)) as displays:
        assert displays == []


def test_the_live_table_stops_when_the_sweep_fails():
    console = Console(file=io.StringIO(), force_terminal=True)
    with pytest.raises(RuntimeError, match="trial crashed"):
        with trial_table(console, TuneConfig(space=SPACE, max_t=3)) as displays:
            (table,) = displays
            assert isinstance(table, LiveTrialTable) and table.params == ["optim.lr"]
            table.setup()  # Tune calls it when the experiment starts
            live = table_module._STATE["live"]
            assert live.is_started and table.console is console
            raise RuntimeError("trial crashed")
    assert not live.is_started and table_module._STATE["live"] is None
