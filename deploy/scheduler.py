"""Fair sharing of one model between requests: units of work, round robin, deadlines.

A request is a generator of units (`deploy.pyfunc.FlowScorer.plan`: at most 64 images and one
noise draw each). One worker thread runs the units of all requests in progress in turn, so a
request of u units finishes after about u x (requests in progress) units, whatever else is
queued: a 1-image request never waits for the whole of a 1024-image one, only for one unit of
it (processor sharing, as in an OS scheduler's round robin).

A request still running `timeout_s` after it arrived is dropped (`DeadlineExceeded`) and the
rest of its work is not done; at most `max_pending` requests are in progress, more get
`Overloaded` at once. The worker runs units on its own thread so the event loop stays free to
answer /health and /ready.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any


class Overloaded(RuntimeError):
    """Too many requests in progress; the client should retry later."""


class DeadlineExceeded(RuntimeError):
    """A request ran past its deadline and was dropped."""


@dataclass
class _Job:
    steps: Generator[None, None, Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float
    units: int = field(default=0)

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class FairScheduler:
    """Round-robin runner of request generators on one worker thread (see the module)."""

    def __init__(self, max_pending: int, timeout_s: float) -> None:
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._jobs: deque[_Job] = deque()
        self._in_progress = 0  # queued plus the one being run
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="nfpipe-scorer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(timeout=5)

    @property
    def pending(self) -> int:
        """Requests accepted and not finished (queued or being run)."""
        return self._in_progress

    @property
    def ready(self) -> bool:
        """Accepting work: the worker is alive and the queue is not full."""
        return self._thread.is_alive() and self.pending < self.max_pending

    async def run(self, steps: Generator[None, None, Any]) -> Any:
        """Queue a request's units; its result once the worker has run them all."""
        loop = asyncio.get_running_loop()
        job = _Job(steps, loop.create_future(), loop, time.monotonic() + self.timeout_s)
        with self._wake:
            if self._in_progress >= self.max_pending:
                steps.close()
                raise Overloaded(f"{self._in_progress} requests in progress (the most this "
                                 "server takes); retry later")
            self._in_progress += 1
            self._jobs.append(job)
            self._wake.notify()
        return await job.future

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            more = self._step(job)
            with self._wake:
                if more:
                    self._jobs.append(job)
                else:
                    self._in_progress -= 1

    def _next_job(self) -> _Job | None:
        with self._wake:
            while not self._jobs and not self._stopped:
                self._wake.wait()
            return None if self._stopped else self._jobs.popleft()

    def _step(self, job: _Job) -> bool:
        """Run one unit of `job`; True when it has more."""
        if job.future.done():  # cancelled: the client disconnected
            job.steps.close()
            return False
        if time.monotonic() > job.deadline:
            job.steps.close()
            job.settle(error=DeadlineExceeded(
                f"the request did not finish within {self.timeout_s:g} s (after {job.units} "
                "units of work); send fewer images or a smaller k, or retry when the server "
                "is less busy"))
            return False
        try:
            next(job.steps)
        except StopIteration as done:
            job.settle(result=done.value)
            return False
        except Exception as err:  # noqa: BLE001 - handed to the request that caused it
            job.settle(error=err)
            return False
        job.units += 1
        return True
