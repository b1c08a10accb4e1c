"""RealNVP: checkerboard and channel-wise masked couplings with ResNet s/t networks.

Per scale: `steps` checkerboard couplings, the plain 2×2 squeeze, `steps` channel-wise
couplings, factor out half; the last scale has `steps + 1` checkerboard couplings (paper: 3, 3
and 4). As in the authors' code (`real_nvp_multiscale_dataset.py`), the channel-wise couplings
follow the plain squeeze, so their halves are not the checkerboard's (after the ordered
squeeze they would be, and the alternation of two mask types would be lost); the ordered
order is used only to factor out half (`squeeze: ordered`: `SqueezeOrder` before the split,
so the factored-out half is one colour of the spatial checkerboard over all image channels).
The s/t ResNets are weight-normalised (`weight_norm`), as in the authors' code.
Logit preprocessing (`preprocess: auto`) comes first and its log-det counts. ActNorm after
every coupling stands in for the paper's batch normalisation (which would couple the examples
of a batch).

Reference: Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (2016),
https://arxiv.org/abs/1605.08803
"""

from __future__ import annotations

from flows.config import ModelConfig
from flows.density import FlowModel
from flows.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    CheckerboardPartition,
    LogitTransform,
    Squeeze,
    SqueezeOrder,
)
from flows.models.glow import net_dtype
from flows.models.stack import MultiScaleStack
from flows.nets import resnet


def _coupling(cfg: ModelConfig, partition) -> list:
    net = resnet(cfg.hidden, cfg.res_blocks, weight_norm=cfg.weight_norm)
    kwargs = dict(net_dtype=net_dtype(cfg), checkpoint_net=cfg.checkpoint_nets)
    if cfg.coupling == "affine":
        layer = AffineCoupling(partition, net, scale="tanh", **kwargs)
    else:
        layer = AdditiveCoupling(partition, net, **kwargs)
    return [layer, ActNorm(partition.channels)]


def realnvp_stack(cfg: ModelConfig, shape: tuple[int, int, int]) -> MultiScaleStack:
    c = shape[0]
    scales, keeps = [], []
    for level in range(cfg.levels):
        last = level == cfg.levels - 1
        layers = [LogitTransform(cfg.logit_alpha)] if cfg.uses_logit and level == 0 else []
        for j in range(cfg.steps + 1 if last else cfg.steps):
            layers += _coupling(cfg, CheckerboardPartition(c, flip=j % 2 == 1))
        if not last:
            c *= 4
            layers.append(Squeeze())
            for j in range(cfg.steps):
                layers += _coupling(cfg, ChannelPartition(c, flip=j % 2 == 1))
            if cfg.squeeze == "ordered":  # the factor-out keeps a checkerboard half
                layers.append(SqueezeOrder())
            keeps.append(c // 2)
            c //= 2
        else:
            keeps.append(None)
        scales.append(layers)
    return MultiScaleStack(scales, keeps, shape)


class RealNVP(FlowModel):
    """RealNVP on [B, C, H, W] images; logit preprocessing is part of the model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, realnvp_stack(cfg, cfg.image_shape))
