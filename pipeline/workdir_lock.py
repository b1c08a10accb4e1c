"""One pipeline run per working directory: an exclusive lock on `WORKDIR/nfpipe.lock`.

Two runs in one workdir would train into the same Ray run folder and mix their stage records.
The lock is `fcntl.flock`, so the kernel releases it when its process dies, even on
`kill -9`; the file names the holder (PID, host, start time) for the message of a run that
finds it taken. A file still naming a holder while the lock is free was left by a run that
died: the new run takes it over and says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "nfpipe.lock"


class WorkdirBusy(RuntimeError):
    """Another live run holds the workdir's lock."""


@contextmanager
def hold_workdir(workdir: Path, say: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold `workdir`'s lock for the block (WorkdirBusy at once if another run holds it);
    `say` tells when a dead run's lock is taken over. The file is emptied on the way out, on
    errors and Ctrl-C too."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"another nfpipe run uses {workdir}: {_describe(_read_holder(fd))}; wait "
                "for it to finish or stop it, or give this run another workdir "
                "(--set workdir=PATH)"
            ) from None
        previous = _read_holder(fd)
        if previous:
            say(f"the run that held {path} ({_describe(previous)}) is gone: "
                "lock taken over")
        _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # names nobody: the next run starts without a takeover
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def _write_holder(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())
    os.fsync(fd)


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "holder unknown"
    return (f"PID {holder['pid']} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")
