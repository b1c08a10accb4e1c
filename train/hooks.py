"""Hooks into the training step: nothing by default; `FaultInjection` for tests of failure.

The loop calls `hooks.before_step(step, world, job)` before each optimiser step and passes the
loss through `hooks.loss(loss, step)`. A hooks object travels with the `TrainJob` into every
Ray worker (it is pickled with it), so it holds plain values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from data_prep import storage

if TYPE_CHECKING:
    from train.ddp import WorkerInfo


class TrainHooks:
    """The default: no hooks."""

    def before_step(self, step: int, world: WorkerInfo, run_dir: str | None) -> None:
        """Called on every rank before global step `step` (counted from 1)."""

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss the step back-propagates."""
        return loss


NO_HOOKS = TrainHooks()


class InjectedFault(RuntimeError):
    """A failure raised on purpose by `FaultInjection.fail_at_steps`."""


@dataclass(frozen=True)
class FaultInjection(TrainHooks):
    """Deliberate failures, for tests of restart and of the non-finite guard.

    fail_at_steps: raise in the worker of rank `fail_rank` at each of these global steps, once
        per run (a marker file in the run folder makes 'once' survive the restart).
    nan_at_steps: global steps whose loss is replaced by NaN (all ranks).
    nan_from_step: replace the loss by NaN at every step from this one on.
    """

    fail_at_steps: tuple[int, ...] = ()
    fail_rank: int = 0
    nan_at_steps: tuple[int, ...] = ()
    nan_from_step: int | None = None

    def __post_init__(self) -> None:
        steps = (*self.fail_at_steps, *self.nan_at_steps, self.nan_from_step or 1)
        if any(s < 1 for s in steps):
            raise ValueError("fault injection steps count from 1")

    def before_step(self, step: int, world: WorkerInfo, run_dir: str | None) -> None:
        if self.fail_rank >= world.world_size:
            raise ValueError(f"fail_rank={self.fail_rank} must be below the "
                             f"{world.world_size} workers")
        if step not in self.fail_at_steps or world.rank != self.fail_rank:
            return
        if run_dir is None:
            raise ValueError("fail_at_steps needs the job's run_dir for its marker files")
        marker = storage.join(run_dir, f"fault_injected_step{step}_rank{world.rank}")
        if storage.exists(marker):
            return
        storage.write_bytes(marker, b"")  # in the run folder: local or object storage
        raise InjectedFault(f"injected failure at step {step} on rank {world.rank}")

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        persistent = self.nan_from_step is not None and step >= self.nan_from_step
        if step in self.nan_at_steps or persistent:
            return loss * float("nan")  # keeps the graph: the gradients become NaN too
        return loss
