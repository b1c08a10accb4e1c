"""Glow: multi-scale flow of (ActNorm → invertible 1×1 conv → coupling) steps.

Reference: Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions (2018),
https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

import torch

from flows.config import ModelConfig
from flows.density import FlowModel
from flows.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    InvConv1x1,
    InvConv1x1LU,
    LearnedPrior,
    LogitTransform,
    SplitPrior,
    Squeeze,
)
from flows.models.stack import MultiScaleStack
from flows.nets import glow_net


def net_dtype(cfg: ModelConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.net_dtype == "bfloat16" else torch.float32


def glow_step(cfg: ModelConfig, channels: int) -> list:
    """ActNorm → 1×1 conv → coupling on [B, channels, H, W]."""
    invconv = InvConv1x1LU if cfg.invconv == "lu" else InvConv1x1
    kwargs = dict(net_dtype=net_dtype(cfg), checkpoint_net=cfg.checkpoint_nets)
    partition = ChannelPartition(channels)
    net = glow_net(cfg.hidden, actnorm=cfg.coupling_actnorm)
    if cfg.coupling == "affine":
        coupling = AffineCoupling(partition, net, scale="sigmoid", **kwargs)
    else:
        coupling = AdditiveCoupling(partition, net, **kwargs)
    return [ActNorm(channels), invconv(channels), coupling]


def glow_stack(cfg: ModelConfig, shape: tuple[int, int, int],
               logit: bool = False) -> MultiScaleStack:
    """L scales of: squeeze, K steps, then split with a conditional prior (last: top prior)."""
    c, h, w = shape
    scales, keeps = [], []
    for level in range(cfg.levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers = [LogitTransform(cfg.logit_alpha)] if logit and level == 0 else []
        layers.append(Squeeze())
        for _ in range(cfg.steps):
            layers += glow_step(cfg, c)
        if level < cfg.levels - 1:
            split = SplitPrior(c)
            layers.append(split)
            keeps.append(split.keep)
            c = split.keep
        else:
            if cfg.learn_prior:
                layers.append(LearnedPrior((c, h, w)))
            keeps.append(None)
        scales.append(layers)
    return MultiScaleStack(scales, keeps, shape)


class Glow(FlowModel):
    """Glow on [B, C, H, W] images, y ∈ [-0.5, 0.5) (logit first with `preprocess: logit`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, glow_stack(cfg, cfg.image_shape, logit=cfg.uses_logit))
