"""Invertible layers; every one follows `forward(h) -> (h', logdet[B])`, `inverse(h') -> h`."""

from flows.layers.actnorm import ActNorm
from flows.layers.base import InvertibleLayer
from flows.layers.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    CheckerboardPartition,
    ContextPartition,
    Coupling,
    InterleavedPartition,
)
from flows.layers.elementwise import DiagonalScale, LogitTransform, Sigmoid
from flows.layers.invconv import InvConv1x1, InvConv1x1LU
from flows.layers.split import LearnedPrior, SplitPrior
from flows.layers.squeeze import Flatten, OrderedSqueeze, Squeeze, SqueezeOrder

#: Every concrete invertible layer class; the contract test is checked against this list.
LAYERS: tuple[type[InvertibleLayer], ...] = (
    ActNorm,
    InvConv1x1,
    InvConv1x1LU,
    AdditiveCoupling,
    AffineCoupling,
    Squeeze,
    OrderedSqueeze,
    SqueezeOrder,
    Flatten,
    SplitPrior,
    LearnedPrior,
    LogitTransform,
    DiagonalScale,
    Sigmoid,
)

__all__ = [
    "LAYERS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelPartition",
    "CheckerboardPartition",
    "ContextPartition",
    "Coupling",
    "DiagonalScale",
    "Flatten",
    "InterleavedPartition",
    "InvConv1x1",
    "InvConv1x1LU",
    "InvertibleLayer",
    "LearnedPrior",
    "LogitTransform",
    "OrderedSqueeze",
    "Sigmoid",
    "SplitPrior",
    "Squeeze",
    "SqueezeOrder",
]
