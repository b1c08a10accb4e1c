"""NICE: additive couplings with MLP shift networks on the flattened image, then scaling.

Layers: [logit (preprocess: auto)] → flatten → ActNorm (data-initialised per-dimension affine,
so the start is already standardised) → `steps` additive couplings → diagonal scaling.
With a constant Jacobian the couplings alone cannot pile density up at the edges of the
[-0.5, 0.5) cube where most digit/MNIST pixels sit; the logit (RealNVP's preprocessing) can.

Reference: Dinh, Krueger & Bengio, NICE: Non-linear Independent Components Estimation (2014),
https://arxiv.org/abs/1410.8516
"""

from __future__ import annotations

import math

from flows.config import ModelConfig
from flows.density import FlowModel
from flows.layers import (
    ActNorm,
    AdditiveCoupling,
    DiagonalScale,
    Flatten,
    InterleavedPartition,
    LogitTransform,
)
from flows.models.glow import net_dtype
from flows.models.stack import MultiScaleStack
from flows.nets import mlp


def nice_stack(cfg: ModelConfig, shape: tuple[int, int, int]) -> MultiScaleStack:
    d = math.prod(shape)
    net = mlp(cfg.hidden, cfg.mlp_layers)
    kwargs = dict(net_dtype=net_dtype(cfg), checkpoint_net=cfg.checkpoint_nets)
    couplings = [AdditiveCoupling(InterleavedPartition(d, flip=j % 2 == 1), net, **kwargs)
                 for j in range(cfg.steps)]
    pre = [LogitTransform(cfg.logit_alpha)] if cfg.uses_logit else []
    layers = [*pre, Flatten(shape), ActNorm(d), *couplings, DiagonalScale((d,))]
    return MultiScaleStack([layers], [None], shape)


class NICE(FlowModel):
    """NICE with a standard normal prior; `steps` couplings of `mlp_layers`-deep MLPs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, nice_stack(cfg, cfg.image_shape))
