"""One contract for every invertible layer (checked against flows.LAYERS, so none skips it)."""

from __future__ import annotations

import copy

import pytest
import torch
from flows_helpers import per_example_jacobians, perturb_, rel_err

import flows
from flows.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    CheckerboardPartition,
    ContextPartition,
    DiagonalScale,
    Flatten,
    InterleavedPartition,
    InvConv1x1,
    InvConv1x1LU,
    LearnedPrior,
    LogitTransform,
    OrderedSqueeze,
    Sigmoid,
    SplitPrior,
    Squeeze,
    SqueezeOrder,
)
from flows.nets import glow_net, mlp, resnet


def normal(*shape):
    return lambda: torch.randn(*shape)


def in_cube(*shape):
    return lambda: torch.rand(*shape) - 0.5


# id -> (layer factory, input sampler); images are [2, C, 4, 4], flat inputs [2, D]
CASES = {
    "actnorm-image": (lambda: ActNorm(4), normal(2, 4, 4, 4)),
    "actnorm-flat": (lambda: ActNorm(6), normal(2, 6)),
    "invconv-plain": (lambda: InvConv1x1(4), normal(2, 4, 4, 4)),
    "invconv-lu": (lambda: InvConv1x1LU(3), normal(2, 3, 4, 4)),
    "additive-channel": (lambda: AdditiveCoupling(ChannelPartition(4), glow_net(8)),
                         normal(2, 4, 4, 4)),
    "additive-interleaved": (lambda: AdditiveCoupling(InterleavedPartition(7, flip=True),
                                                      mlp(8, 2)), normal(2, 7)),
    "affine-sigmoid-channel-odd": (
        lambda: AffineCoupling(ChannelPartition(3, flip=True), glow_net(8)),
        normal(2, 3, 4, 4)),
    "affine-tanh-checkerboard": (
        lambda: AffineCoupling(CheckerboardPartition(2, flip=True), resnet(8, 1), scale="tanh"),
        normal(2, 2, 4, 4)),
    "affine-tanh-channel-checkpointed": (
        lambda: AffineCoupling(ChannelPartition(4), resnet(8, 1), scale="tanh",
                               checkpoint_net=True), normal(2, 4, 4, 4)),
    "affine-sigmoid-interleaved-bf16": (
        lambda: AffineCoupling(InterleavedPartition(6), mlp(8, 1), net_dtype=torch.bfloat16),
        normal(2, 6)),
    "affine-sigmoid-channel-plain-net": (
        lambda: AffineCoupling(ChannelPartition(4), glow_net(8, actnorm=False)),
        normal(2, 4, 4, 4)),
    "affine-tanh-checkerboard-weightnorm": (
        lambda: AffineCoupling(CheckerboardPartition(2), resnet(8, 1, weight_norm=True),
                               scale="tanh"), normal(2, 2, 4, 4)),
    "affine-tanh-context-checkerboard": (  # the variational dequantiser's coupling
        lambda: AffineCoupling(ContextPartition(CheckerboardPartition(2, flip=True), 3),
                               glow_net(8, actnorm=False), scale="tanh"), normal(2, 5, 4, 4)),
    "additive-context-channel": (
        lambda: AdditiveCoupling(ContextPartition(ChannelPartition(3), 2), glow_net(8)),
        normal(2, 5, 4, 4)),
    "squeeze": (Squeeze, normal(2, 2, 4, 4)),
    "ordered-squeeze": (OrderedSqueeze, normal(2, 3, 4, 4)),
    "ordered-channels": (SqueezeOrder, normal(2, 8, 2, 2)),  # a permutation, not identity
    "sigmoid": (Sigmoid, normal(2, 2, 4, 4)),
    "flatten": (lambda: Flatten((2, 4, 4)), normal(2, 2, 4, 4)),
    "split-prior": (lambda: SplitPrior(4), normal(2, 4, 4, 4)),
    "learned-prior": (lambda: LearnedPrior((2, 4, 4)), normal(2, 2, 4, 4)),
    "logit": (lambda: LogitTransform(0.05), in_cube(2, 2, 4, 4)),
    "diagonal-scale": (lambda: DiagonalScale((7,)), normal(2, 7)),
}


def make(case_id: str, seed: int = 0):
    factory, sample = CASES[case_id]
    torch.manual_seed(seed)
    layer = perturb_(factory(), seed=seed)
    return layer, sample()


def test_every_exported_layer_has_a_case():
    covered = {type(factory()) for factory, _ in CASES.values()}
    assert set(flows.LAYERS) <= covered, f"no contract case for {set(flows.LAYERS) - covered}"
    assert covered <= set(flows.LAYERS), f"not exported in LAYERS: {covered - set(flows.LAYERS)}"


@pytest.mark.parametrize("case_id", CASES)
def test_shapes_finite_and_inverse(case_id):
    layer, h = make(case_id)
    out, logdet = layer(h)
    assert out.numel() == h.numel() and logdet.shape == (h.shape[0],)
    assert torch.isfinite(out).all() and torch.isfinite(logdet).all()
    if out.shape == h.shape and "squeeze" not in case_id:
        assert rel_err(out, h) > 1e-3, "perturbed layer is still the identity"
    assert rel_err(layer.inverse(out), h) <= 1e-4


@pytest.mark.parametrize("case_id", CASES)
def test_logdet_matches_brute_force_jacobian(case_id):
    layer, h = make(case_id)
    layer, h = layer.double(), h.double()
    jac = per_example_jacobians(lambda t: layer(t)[0], h)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(layer(h)[1], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case_id", CASES)
def test_gradients_reach_every_parameter(case_id):
    layer, h = make(case_id)
    h.requires_grad_(True)
    out, logdet = layer(h)
    (out.square().sum() + logdet.sum()).backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {p.grad}"


@pytest.mark.parametrize("case_id", CASES)
def test_state_dict_round_trip(case_id):
    layer, h = make(case_id, seed=0)
    other, _ = make(case_id, seed=1)
    other.load_state_dict(copy.deepcopy(layer.state_dict()))
    out, logdet = layer(h)
    out2, logdet2 = other(h)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(logdet2, logdet, rtol=0, atol=0)
