"""The non-finite step guard, decided on the device so that a step never waits for the host."""

from __future__ import annotations

import torch

from train.optim import Adamax


class NonFiniteLossError(RuntimeError):
    """The loss or gradient stayed non-finite for `max_nonfinite_steps` steps in a row."""


class NonFiniteGuard:
    """Skips every optimiser step whose gradient norm is not finite; counts the skips.

    The decision is a bool tensor on the device. The gradient norm is computed from the
    gradients after DDP's all-reduce, the same on every rank, so every rank skips alike.
    The optimiser takes it as `found_inf` and skips inside its kernels (parameters, moments
    and step count untouched): torch's fused Adam and `train.optim.Adamax` do; no host sync.

    The counters, the step count included, live on the device and are updated in place (a
    step captured in a CUDA graph replays them); `check` (called at logging intervals and at
    epoch ends) brings them to the host and raises NonFiniteLossError when `max_in_row`
    non-finite steps in a row were reached, naming the step at which that happened.
    """

    def __init__(self, device: torch.device, max_in_row: int, skipped: int = 0,
                 in_row: int = 0, step: int = 0):
        self.max_in_row = max_in_row
        self._skipped = torch.tensor(skipped, device=device)  # in total
        self._in_row = torch.tensor(in_row, device=device)
        self._step = torch.tensor(step, device=device)  # steps attempted
        self._stop_step = torch.tensor(0, device=device)  # where in_row reached max_in_row

    def load(self, skipped: int, in_row: int, step: int) -> None:
        """Continue from counts saved in a checkpoint."""
        self._skipped.fill_(skipped)
        self._in_row.fill_(in_row)
        self._step.fill_(step)
        self._stop_step.fill_(0)

    def step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> torch.Tensor:
        """`optimizer.step()` unless `grad_norm` is non-finite; returns that flag (device)."""
        if not skips_on_device(optimizer):
            raise TypeError(
                f"{type(optimizer).__name__} cannot skip a step on the device; use "
                "train.optim.build_optimizer (fused Adam or train.optim.Adamax)")
        skipped = ~torch.isfinite(grad_norm)
        optimizer.found_inf = skipped.to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        self._step.add_(1)
        self._skipped.add_(skipped)
        self._in_row.add_(1).mul_(skipped)
        reached = (self._in_row >= self.max_in_row) & (self._stop_step == 0)
        self._stop_step.copy_(torch.where(reached, self._step, self._stop_step))
        return skipped

    def check(self) -> tuple[int, int]:
        """(skipped in total, non-finite in a row now), read from the device in one sync;
        raises NonFiniteLossError once `max_in_row` in a row were reached."""
        values = torch.stack([self._skipped, self._in_row, self._stop_step]).tolist()
        skipped, in_row, stop_step = (int(v) for v in values)
        if stop_step:
            raise NonFiniteLossError(
                f"non-finite loss/gradient at step {stop_step}: {self.max_in_row} steps in a "
                f"row (max_nonfinite_steps={self.max_in_row}), {skipped} skipped in total "
                "so far; lower optim.lr, lengthen the warm-up (optim.warmup_images or "
                "optim.warmup_steps) or set optim.grad_clip"
            )
        return skipped, in_row


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` honours a `found_inf` flag on the device."""
    fused = all(group.get("fused") for group in optimizer.param_groups)
    return fused or isinstance(optimizer, Adamax)
