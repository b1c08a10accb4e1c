"""The training state of one worker: model, objective, optimiser, scheduler, EMA, counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flows import build_model, initialize_from_batch
from flows.config import ModelConfig
from train.config import TrainConfig
from train.ddp import WorkerInfo, broadcast_module, gather_digests, wrap_for_training
from train.guard import NonFiniteGuard
from train.optim import Ema, build_optimizer, build_scheduler, lr_on_device
from train.seeding import derive_seed


@dataclass
class TrainState:
    """Everything a step changes; `snapshot()` / `restore()` make it resumable."""

    model: nn.Module  # the DensityModel itself (never wrapped)
    objective: nn.Module  # the model, wrapped in DDP (and compiled) as configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Ema | None
    guard: NonFiniteGuard  # skips and counts non-finite steps on the device
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps attempted (the same on every rank)
    skipped: int = 0  # steps skipped for a non-finite gradient, in total (at the last check)
    nonfinite_in_row: int = 0  # ... of them in a row (at the last check)
    resumes: int = 0  # how many times this run was restored from a checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    step1_digests: list[str] | None = None  # every rank's weight digest after step 1
    init_digests: list[str] | None = None  # every rank's weight digest after the init
    init_images: int = 0  # images the data-dependent initialisation saw (fresh runs)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation, sampling and export use: the EMA weights when kept."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def check_finite(self) -> None:
        """Bring the guard's counters to the host (one sync); raises NonFiniteLossError when
        non-finite steps persisted."""
        self.skipped, self.nonfinite_in_row = self.guard.check()

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "counters": {
                "epoch": self.epoch,
                "step": self.step,
                "skipped": self.skipped,
                "nonfinite_in_row": self.nonfinite_in_row,
                "resumes": self.resumes,
            },
            "history": self.history,
            "step1_digests": self.step1_digests,
            "init": {"digests": self.init_digests, "images": self.init_images},
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        lr_on_device(self.optimizer)  # a checkpoint may hold float lrs, or another device's
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None and saved["ema"] is not None:
            # checkpoints from before the EMA saved its update count counted attempted steps
            self.ema.load_state_dict(saved["ema"], updates=saved["counters"]["step"])
        for name, value in saved["counters"].items():
            setattr(self, name, value)
        self.history = list(saved["history"])
        self.step1_digests = saved["step1_digests"]
        self.guard.load(self.skipped, self.nonfinite_in_row, self.step)
        init = saved.get("init") or {}
        self.init_digests, self.init_images = init.get("digests"), init.get("images", 0)
        self.resumes += 1


def build_state(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    world: WorkerInfo,
    init_x: torch.Tensor | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainState:
    """A model with identical weights on every rank, wrapped for training, and its optimiser.

    Fresh: rank 0 runs the data-dependent initialisation on `init_x` (the init images, which
    `loop.init_batch` gathers from every rank) BEFORE DDP wrapping; then parameters and
    buffers are broadcast from rank 0, and every rank's digest recorded. Resumed: every rank
    loads `resume` (the initialised flags come with the buffers, so nothing re-initialises).
    """
    device = torch.device(world.device)
    torch.manual_seed(derive_seed(cfg.seed, "weights"))
    model = build_model(model_cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if resume is not None:
        model.load_state_dict(resume["model"])
    elif init_x is not None and world.is_chief:
        noise = torch.Generator(device).manual_seed(derive_seed(cfg.seed, "init"))
        initialize_from_batch(model, init_x.to(device), noise)
    broadcast_module(model, world)
    optimizer = build_optimizer(model, cfg.optim)
    ema_decay = cfg.optim.ema_decay_at(cfg.batch_size)  # per step, from images if so given
    state = TrainState(
        model=model,
        objective=wrap_for_training(model, world, cfg.compile),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, cfg.batch_size),
        ema=Ema(model, ema_decay, cfg.optim.ema_debias) if ema_decay else None,
        guard=NonFiniteGuard(device, cfg.max_nonfinite_steps),
    )
    if resume is not None:
        state.restore(resume)
    else:
        state.init_digests = gather_digests(model, world)
        state.init_images = 0 if init_x is None else int(init_x.shape[0])
    return state
