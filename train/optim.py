"""Optimiser, LR warm-up and weight EMA, built from `OptimConfig`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.config import OptimConfig

#: Suffix of a weight-normalised weight's direction v in w = g·v/‖v‖ (torch parametrizations).
WEIGHT_NORM_DIRECTION = "parametrizations.weight.original1"


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or Adamax (Glow uses Adamax) over the model's parameters, in torch's fastest
    implementation.

    Adam is `fused` (one kernel over all parameters, on CPU and CUDA), which also lets the
    non-finite guard skip a step on the device (`found_inf`); torch has no fused Adamax, so
    it runs `foreach` (a few multi-tensor kernels per step instead of one per parameter).
    Weight decay skips the directions v of weight-normalised convs: the loss is invariant to
    ‖v‖, so an L2 pull would shrink v towards 0 unopposed, blowing up the gradient g/‖v‖ and
    finally w itself (the scales g are decayed, as Real NVP did).
    """
    decayed, free = [], []
    for name, p in model.named_parameters():
        (free if name.endswith(WEIGHT_NORM_DIRECTION) else decayed).append(p)
    groups = [g for g in ({"params": decayed}, {"params": free, "weight_decay": 0.0})
              if g["params"]]
    common = {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam(groups, fused=True, **common)
    return torch.optim.Adamax(groups, foreach=True, **common)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, global_batch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up in images seen, then constant: optimiser step s (from 0) brings the
    images seen to N = (s + 1)·global_batch and runs at lr·min(1, N / W), W the warm-up in
    images (`OptimConfig.warmup_images_at`). The LR is a function of the images seen, so it is
    the same for any worker count at one global batch, and the warm-up ends at the same image
    count at any global batch dividing W (with warmup_steps: (s + 1) / warmup_steps, as ever).
    """
    warmup = cfg.warmup_images_at(global_batch)
    if warmup == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) * global_batch / warmup)
    )


class Ema:
    r"""Exponential moving average of a model's weights (Polyak averaging).

    Plain: θ̄_t = d·θ̄_{t-1} + (1 − d)·θ_t, from θ̄_0 = the initial weights.
    Debiased (`debias=True`, as Adam's moments and Glow's `zero_debias`): the average of a
    zero-started EMA divided by 1 − d^t, i.e. θ̄_t = θ̄_{t-1} + (1 − d)/(1 − d^t)·(θ_t − θ̄_{t-1});
    θ̄_1 = θ_1, and the initial weights carry no weight at all.

    Buffers (ActNorm's initialised flag, running statistics) are copied, not averaged.
    `module` is a full copy of the model that evaluation and export use.
    """

    def __init__(self, model: nn.Module, decay: float, debias: bool = True):
        self.decay = decay
        self.debias = debias
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def weight(self, updates: int) -> float:
        """The new iterate's weight at update number `updates` (1, 2, …)."""
        if not self.debias:
            return 1.0 - self.decay
        return (1.0 - self.decay) / (1.0 - self.decay ** max(updates, 1))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int,
               skipped: torch.Tensor | None = None) -> None:
        """Fold in the weights after optimiser update number `updates` (counted from 1); none
        where `skipped` (a bool tensor on the model's device, so a skipped optimiser step
        leaves the average alone without a host sync)."""
        weight = self.weight(updates)
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
