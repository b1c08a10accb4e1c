"""Optimiser, LR warmup and weight EMA, built from `OptimConfig`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.config import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or Adamax (Glow uses Adamax) over `params`, in torch's fastest implementation.

    Adam is `fused` (one kernel over all parameters, on CPU and CUDA), which also lets the
    non-finite guard skip a step on the device (`found_inf`); torch has no fused Adamax, so
    it runs `foreach` (a few multi-tensor kernels per step instead of one per parameter).
    """
    common = {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam(params, fused=True, **common)
    return torch.optim.Adamax(params, foreach=True, **common)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from lr/warmup_steps to lr over `warmup_steps` steps, then constant."""
    warmup = max(cfg.warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


class Ema:
    """Exponential moving average of a model's weights: θ̄ ← d·θ̄ + (1 − d)·θ.

    Buffers (ActNorm's initialised flag, running statistics) are copied, not averaged.
    `module` is a full copy of the model that evaluation and export use.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """One average step; none where `skipped` (a bool tensor on the model's device, so
        a skipped optimiser step leaves the average alone without a host sync)."""
        weight = 1.0 - self.decay
        if skipped is not None:
            weight = (~skipped).to(torch.float32) * weight
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), weight)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
