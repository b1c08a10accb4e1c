"""Data-dependent ActNorm init (flag survives save/load/broadcast) and the W⁻¹ cache."""

from __future__ import annotations

import pytest
import torch
from flows_helpers import rel_err, tiny

from flows import build_model, initialize_from_batch
from flows.io import load_model, save_model
from flows.layers import ActNorm, InvConv1x1, InvConv1x1LU


def actnorms(model):
    return [m for m in model.modules() if isinstance(m, ActNorm)]


def flat_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["glow", "realnvp", "nice", "fvae"])
def test_actnorm_init_standardises_its_input_on_the_init_batch(name):
    model = build_model(tiny(name, levels=1, steps=2, hidden=8, res_blocks=1))
    norms = actnorms(model)
    assert norms and not any(m.is_initialized for m in norms)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: outputs.__setitem__(mod, o[0]))
             for m in norms]
    y = model.dequantize(torch.randint(0, 16, (32, 2, 4, 4)))
    assert initialize_from_batch(model, y) is True
    for h in hooks:
        h.remove()
    for m in norms:
        assert m.is_initialized
        out = outputs[m].transpose(0, 1).reshape(m.channels, -1)
        torch.testing.assert_close(out.mean(1), torch.zeros(m.channels), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.std(1, unbiased=False), torch.ones(m.channels),
                                   atol=1e-3, rtol=0)


def standardised(out: torch.Tensor, channels: int) -> None:
    flat = out.transpose(0, 1).reshape(channels, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(channels), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(channels), atol=1e-3,
                               rtol=0)


def test_actnorm_public_init_api_pending_then_initialised_loaded_and_re_armed():
    layer = ActNorm(3)
    h = 2.0 + 3.0 * torch.randn(16, 3, 4, 4)
    assert not layer.is_initialized and not layer.is_pending
    out, _ = layer(h)
    torch.testing.assert_close(out, h)  # unarmed: the identity, nothing initialised
    assert not layer.is_initialized

    layer.mark_pending()
    assert layer.is_pending and not layer.is_initialized
    with torch.no_grad():
        out, _ = layer(h)  # the pending forward initialises from its own input
    assert layer.is_initialized and not layer.is_pending
    standardised(out, 3)

    loaded = ActNorm(3)
    loaded.load_state_dict(layer.state_dict())
    assert loaded.is_initialized and not loaded.is_pending
    other = -1.0 + 0.5 * torch.randn(16, 3, 4, 4)
    torch.testing.assert_close(loaded(other)[0], layer(other)[0])  # no re-init on a forward

    loaded.mark_pending()  # re-arms an initialised layer: the next input sets b, log s again
    with torch.no_grad():
        out, _ = loaded(other)
    standardised(out, 3)
    loaded.mark_pending()
    loaded.clear_pending()
    assert not loaded.is_pending
    torch.testing.assert_close(loaded(h)[0], (h + loaded.bias.view(1, -1, 1, 1))
                               * loaded.log_scale.exp().view(1, -1, 1, 1))

    flat, x = ActNorm(5), torch.randn(32, 5) * 4 + 1
    flat.initialize_from(x)
    assert flat.is_initialized
    with torch.no_grad():
        standardised(flat(x)[0], 5)
    fresh = ActNorm(5)
    fresh.mark_initialized()
    assert fresh.is_initialized and bool(fresh.state_dict()["initialized"])


def test_initialisation_is_a_no_op_once_done_and_after_state_dict_load(tmp_path):
    cfg = tiny("glow", levels=2, steps=2, hidden=8)
    model = build_model(cfg)
    assert initialize_from_batch(model, torch.randint(0, 16, (16, 2, 4, 4))) is True
    state = flat_state(model)
    assert initialize_from_batch(model, torch.randint(0, 16, (16, 2, 4, 4))) is False
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert any(k.endswith("initialized") for k in state)

    # what a broadcast from rank 0 does: copy parameters and buffers into another replica
    replica = build_model(cfg)
    replica.load_state_dict(model.state_dict())
    assert all(m.is_initialized for m in actnorms(replica))
    assert initialize_from_batch(replica, torch.randint(0, 16, (16, 2, 4, 4))) is False
    assert all(torch.equal(state[k], v) for k, v in replica.state_dict().items())

    loaded = load_model(save_model(model, tmp_path / "bundle"))
    assert all(m.is_initialized for m in actnorms(loaded))
    assert initialize_from_batch(loaded, torch.randint(0, 16, (16, 2, 4, 4))) is False
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())


def test_initialize_accepts_a_ddp_style_wrapper():
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = build_model(tiny("glow", levels=1, steps=1, hidden=8))
    assert initialize_from_batch(Wrapper(model), torch.randint(0, 16, (8, 2, 4, 4)))
    assert all(m.is_initialized for m in actnorms(model))
    with pytest.raises(TypeError, match="Expected a DensityModel"):
        initialize_from_batch(Wrapper(ActNorm(2)), torch.randn(8, 2, 4, 4))


@pytest.mark.parametrize("cls", [InvConv1x1, InvConv1x1LU])
def test_cached_inverse_is_reused_and_invalidated(cls):
    layer = cls(4)
    h = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        first = layer.weight_inverse()
        assert layer.weight_inverse() is first  # cached while weights are unchanged

    # a training step changes the weights in place: the cache must not survive it
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    out, logdet = layer(h)
    (out.square().sum() + logdet.sum()).backward()
    opt.step()
    with torch.no_grad():
        out, _ = layer(h)
        assert rel_err(layer.inverse(out), h) <= 1e-4
        assert layer.weight_inverse() is not first

    # so must a load_state_dict from another layer
    other = cls(4)
    with torch.no_grad():
        layer.inverse(out)
        layer.load_state_dict(other.state_dict())
        out, _ = layer(h)
        assert rel_err(layer.inverse(out), h) <= 1e-4


def test_inverse_differentiates_through_the_weights_when_training():
    layer = InvConv1x1LU(3)
    with torch.no_grad():
        layer.weight_inverse()  # fill the cache
    layer.inverse(torch.randn(2, 3, 2, 2)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
