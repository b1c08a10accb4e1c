"""Run a function on N ranks of a real gloo process group, without Ray.

The DDP behaviour of the loop (gradients averaged across ranks, ActNorm initialised from every
rank's images, identical weights everywhere) is a property of torch.distributed, not of Ray
Train: N spawned processes joined over TCP on 127.0.0.1 exercise the same collectives in a few
seconds instead of Ray Train's start-up per fit.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from helpers import free_port

RankFn = Callable[..., Any]  # fn(world: WorkerInfo, *args) -> picklable value


def run_ranks(fn: RankFn, *args: Any, world_size: int = 2, timeout_s: float = 300) -> list[Any]:
    """`fn(world, *args)` on `world_size` ranks of one gloo group; the values in rank order.

    `fn` must be importable by name (a module-level function): the ranks are spawned. A rank
    that raises fails the call with its traceback; a group that does not finish within
    `timeout_s` is killed.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank_main, args=(fn, args, rank, world_size, port, results),
                             daemon=True) for rank in range(world_size)]
    for process in ranks:
        process.start()
    try:
        return _collect(results, world_size, time.monotonic() + timeout_s)
    finally:
        for process in ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def _collect(results, world_size: int, deadline: float) -> list[Any]:
    values: dict[int, Any] = {}
    while len(values) < world_size:
        try:
            rank, ok, value = results.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            missing = sorted(set(range(world_size)) - set(values))
            raise TimeoutError(f"ranks {missing} did not finish in time") from None
        if not ok:
            raise AssertionError(f"rank {rank} failed:\n{value}")
        values[rank] = value
    return [values[rank] for rank in range(world_size)]


def _rank_main(fn: RankFn, args: tuple, rank: int, world_size: int, port: int,
               results) -> None:
    import torch
    import torch.distributed as dist

    from train.ddp import WorkerInfo

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=120))
        try:
            results.put((rank, True, fn(WorkerInfo(rank, world_size, threads=1), *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((rank, False, traceback.format_exc()))
