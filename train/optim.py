"""Optimiser, LR warm-up and weight EMA, built from `OptimConfig`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.config import OptimConfig

#: Suffix of a weight-normalised weight's direction v in w = g·v/‖v‖ (torch parametrizations).
WEIGHT_NORM_DIRECTION = "parametrizations.weight.original1"


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or Adamax (Glow uses Adamax) over the model's parameters, as multi-tensor kernels
    that skip a step on the device and take the learning rate as a device tensor.

    Adam is torch's `fused` one (one kernel over all parameters, on CPU and CUDA); Adamax is
    `Adamax` below (torch's foreach Adamax reads its step counts and a tensor lr on the host).
    Both read the non-finite guard's `found_inf` flag on the device, so a step never waits
    for the host and can be captured in a CUDA graph.
    Weight decay skips the directions v of weight-normalised convs: the loss is invariant to
    ‖v‖, so an L2 pull would shrink v towards 0 unopposed, blowing up the gradient g/‖v‖ and
    finally w itself (the scales g are decayed, as Real NVP did).
    """
    decayed, free = [], []
    for name, p in model.named_parameters():
        (free if name.endswith(WEIGHT_NORM_DIRECTION) else decayed).append(p)
    device = next(model.parameters()).device
    groups = [{**g, "lr": torch.tensor(cfg.lr, device=device)}  # one lr tensor per group
              for g in ({"params": decayed}, {"params": free, "weight_decay": 0.0})
              if g["params"]]
    common = {"betas": cfg.betas, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam(groups, fused=True, **common)
    return Adamax(groups, **common)


def lr_on_device(optimizer: torch.optim.Optimizer) -> None:
    """Make every group's lr a 0-dim float32 tensor on its parameters' device (a checkpoint
    of float lrs, or of another device's tensors, loads them as they were saved)."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dim() == 0):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


class Adamax(torch.optim.Optimizer):
    r"""Adamax (Kingma & Ba 2015, section 7.1) as multi-tensor updates with a device-side skip.

        g ← g + λθ,  m ← β₁m + (1 − β₁)g,  u ← max(β₂u, |g| + ε),
        θ ← θ − lr/(1 − β₁ᵗ) · m/u

    The same math and state (`step`, `exp_avg`, `exp_inf` per parameter) as torch.optim.Adamax,
    so its checkpoints load. Set `found_inf` (a 0-dim tensor on the parameters' device, as
    torch's fused optimisers read it) before `step()`: where it is nonzero the step leaves
    parameters, moments and step counts untouched — decided in the kernels, never on the
    host. The lr may be a device tensor. About 15 foreach kernels per parameter group.

    Reference: Kingma & Ba, Adam (2015), https://arxiv.org/abs/1412.6980
    """

    def __init__(self, params, lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Adamax.step takes no closure.")
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params, found_inf)

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif state["step"].device != p.device:  # torch's Adamax keeps its steps on the CPU
            state["step"] = state["step"].to(p.device, torch.float32)
        return state

    def _update_group(self, group: dict, params: list[torch.Tensor],
                      found_inf: torch.Tensor | None) -> None:
        states = [self._state(p) for p in params]
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_infs = [s["exp_inf"] for s in states]
        beta1, beta2 = group["betas"]
        device = params[0].device
        skip = (torch.zeros((), device=device) if found_inf is None
                else (found_inf != 0).to(device, torch.float32))
        keep = 1.0 - skip
        grads = _zeroed_where(skip, [p.grad for p in params])
        # alpha picks the overload that takes a device tensor (without it, `.item()`)
        torch._foreach_add_(steps, keep, alpha=1.0)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        _lerp_(exp_avgs, grads, keep * (1.0 - beta1))
        torch._foreach_mul_(exp_infs, torch.where(skip > 0, 1.0, beta2))
        grads = torch._foreach_abs(grads)
        torch._foreach_add_(grads, group["eps"])
        torch._foreach_mul_(grads, keep)  # a skipped step's max(u, 0) keeps u (u >= 0)
        torch._foreach_maximum_(exp_infs, grads)
        # lr/(1 - β₁ᵗ), 0 when skipped; t >= 1 so that a skipped first step stays finite
        t = steps[0].clamp(min=1.0)
        step_size = keep * group["lr"] / (1.0 - torch.pow(beta1, t))
        update = torch._foreach_mul(exp_avgs, step_size.to(exp_avgs[0].dtype))
        denom = torch._foreach_add(exp_infs, skip, alpha=1.0)  # u + 1 when skipped: not 0/0
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(params, update)


def _lerp_(starts: list[torch.Tensor], ends: list[torch.Tensor],
           weight: torch.Tensor) -> None:
    """starts += weight · (ends − starts), weight a 0-dim device tensor. (torch's
    `_foreach_lerp_` reads a tensor weight on the host: it only takes a Python number.)"""
    steps = torch._foreach_sub(ends, starts)
    torch._foreach_mul_(steps, weight)
    torch._foreach_add_(starts, steps)


def _zeroed_where(skip: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients, with every element +0.0 where `skip` (a 0/1 float tensor), exactly
    and without reading `skip` on the host. Multiplying the floats by 0 would keep NaNs
    (NaN·0 = NaN); multiplying their bit patterns, viewed as integers, by 0 or 1 does not."""
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    keep = (skip == 0).to(torch.int32)
    by_width: dict[int, list[torch.Tensor]] = {}
    for g in grads:
        by_width.setdefault(g.element_size(), []).append(g.view(as_int[g.element_size()]))
    for width, bits in by_width.items():
        torch._foreach_mul_(bits, keep.to(as_int[width]))
    return grads


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

    Three multi-tensor kernels over all parameters per update; t counts the updates folded in
    (skipped optimiser steps are not) in a tensor on the device, so an update never waits for
    the host. Buffers (ActNorm's initialised flag, running statistics) are copied, not
    averaged. `module` is a full copy of the model that evaluation and export use.
    """

    def __init__(self, model: nn.Module, decay: float, debias: bool = True):
        self.decay = decay
        self.debias = debias
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        device = next(model.parameters()).device
        self.updates = torch.zeros((), dtype=torch.float64, device=device)  # t

    def weight(self, updates: int | torch.Tensor) -> float | torch.Tensor:
        """The new iterate's weight at update number `updates` (1, 2, …)."""
        if not self.debias:
            return 1.0 - self.decay
        if isinstance(updates, torch.Tensor):
            return (1.0 - self.decay) / (1.0 - torch.pow(self.decay, updates.clamp(min=1)))
        return (1.0 - self.decay) / (1.0 - self.decay ** max(updates, 1))

    @torch.no_grad()
    def update(self, model: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """Fold in the model's weights after an optimiser step; none where `skipped` (a bool
        tensor on the model's device: a skipped step leaves the average and t alone)."""
        keep = (torch.ones((), device=self.updates.device) if skipped is None
                else (~skipped).to(torch.float32))
        self.updates += keep
        weight = keep * self.weight(self.updates)
        ema_params = list(self.module.parameters())
        params = list(model.parameters())  # no_grad: no detached views needed
        _lerp_(ema_params, params, weight.to(ema_params[0].dtype))
        ema_buffers = list(self.module.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, list(model.buffers()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged module's state, with t under `UPDATES_KEY`."""
        return {**self.module.state_dict(), UPDATES_KEY: self.updates.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        """Load `state_dict()`; a checkpoint from before t was saved gives t as `updates`."""
        state = dict(state)
        saved = state.pop(UPDATES_KEY, None)
        self.module.load_state_dict(state)
        self.updates.fill_(updates if saved is None else saved.item())


#: Where `Ema.state_dict` keeps its update count t (no module has such a state key).
UPDATES_KEY = "_ema_updates"
