"""One run per workdir: a second `nfpipe run` refuses at once, naming the holder; a lock left
by a killed run is taken over, and the run says so. Real processes hold the lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, subprocess_env
from rich.console import Console

from pipeline.cli import main
from pipeline.config import validate
from pipeline.runner import StageFailed, run_pipeline
from pipeline.stages.base import Stage
from pipeline.workdir_lock import LOCK_FILE, WorkdirBusy, hold_workdir

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from pipeline.workdir_lock import hold_workdir\n"
    "with hold_workdir(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding `tmp_path/work`'s lock (the runner's own lock function)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "work")], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _tiny(ran: list[str]) -> dict:
    return {"work": Stage("work", (), lambda ctx: ran.append("work") or {}, lambda c: c.name)}


def test_a_second_run_refuses_at_once_naming_the_holder(tmp_path, holder, capsys):
    workdir = tmp_path / "work"
    started = time.monotonic()
    assert main(["run", "--stages", "data_prep", "--set", f"workdir={workdir}"]) == 1
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 10
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"another nfpipe run uses {workdir}" in err
    assert f"PID {holder.pid} on host {socket.gethostname()}" in err
    assert not (workdir / "records").exists()  # refused before anything ran


def test_a_killed_runs_lock_is_taken_over_and_said(tmp_path, holder):
    workdir = tmp_path / "work"
    holder.send_signal(signal.SIGKILL)  # no clean-up: its file still names it
    holder.wait(10)
    assert f'"pid": {holder.pid}' in (workdir / LOCK_FILE).read_text()
    ran: list[str] = []
    console = Console(record=True, width=300, file=open(os.devnull, "w"))  # noqa: SIM115
    cfg = validate({"workdir": str(workdir)})
    run_pipeline(cfg, ["work"], console=console, graph=_tiny(ran))
    said = console.export_text()
    assert ran == ["work"]
    assert f"PID {holder.pid} on host {socket.gethostname()}" in said
    assert "is gone: lock taken over" in said
    # that run ended cleanly: the next one takes the lock without a word
    again = Console(record=True, width=300, file=open(os.devnull, "w"))  # noqa: SIM115
    run_pipeline(cfg, ["work"], console=again, graph=_tiny(ran))
    assert "taken over" not in again.export_text()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_lock_is_released_on_errors_and_ctrl_c(tmp_path, error):
    def fail(ctx):
        raise error("stop")

    cfg = validate({"workdir": str(tmp_path / "work")})
    graph = {"work": Stage("work", (), fail, lambda c: c.name)}
    with pytest.raises(StageFailed):  # the runner wraps Ctrl-C too, after its record
        run_pipeline(cfg, ["work"], console=Console(quiet=True), graph=graph)
    said: list[str] = []
    with hold_workdir(Path(cfg.workdir), say=said.append):
        pass
    assert said == []


def test_one_process_cannot_take_a_held_lock_twice(tmp_path):
    with hold_workdir(tmp_path), pytest.raises(WorkdirBusy, match=f"PID {os.getpid()}"):
        with hold_workdir(tmp_path):
            pass
