"""One contract for every model: the DensityModel API, invertibility, exact log-dets, grads."""

from __future__ import annotations

import math

import pytest
import torch
from flows_helpers import (
    ALL_CONFIGS,
    EXACT_CONFIGS,
    per_example_jacobians,
    perturb_,
    rel_err,
)

from flows import DensityModel, build_model, initialize_from_batch


def levels(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.n_bins, (b, *cfg.image_shape), generator=g, dtype=torch.uint8)


def ready(key: str, seed: int = 0) -> DensityModel:
    """Built, data-initialised and moved off the identity."""
    cfg = ALL_CONFIGS[key]
    torch.manual_seed(seed)
    model = build_model(cfg)
    initialize_from_batch(model, levels(cfg, 8, seed=1))
    return perturb_(model, scale=0.05, seed=seed)


@pytest.mark.parametrize("key", ALL_CONFIGS)
def test_api_shapes_and_finite(key):
    model, cfg = ready(key), ALL_CONFIGS[key]
    x = levels(cfg)
    y = model.dequantize(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y >= -0.5).all() and (y < 0.5).all()
    assert torch.equal(model.to_levels(y), x)
    for k in (1, 3):
        lp, bpd = model.log_prob(y, k=k), model.bits_per_dim(x, k=k)
        assert lp.shape == bpd.shape == (4,)
        assert torch.isfinite(lp).all() and torch.isfinite(bpd).all()
    assert model.exact == (cfg.name in ("glow", "realnvp", "nice"))
    assert model.forward(x).shape == (4,)


@pytest.mark.parametrize("key", EXACT_CONFIGS)
def test_decode_inverts_encode(key):
    model, cfg = ready(key), EXACT_CONFIGS[key]
    y = model.dequantize(levels(cfg))
    z, logdet = model.encode(y)
    assert z.shape == (4, math.prod(cfg.image_shape)) and logdet.shape == (4,)
    assert rel_err(z, y.flatten(1)) > 1e-2, "perturbed model is still near the identity"
    assert rel_err(model.decode(z), y) <= 1e-4
    z2 = torch.randn_like(z)
    assert rel_err(model.encode(model.decode(z2))[0], z2) <= 1e-4


@pytest.mark.parametrize("key", EXACT_CONFIGS)
def test_model_logdet_matches_brute_force_jacobian(key):
    model, cfg = ready(key).double(), EXACT_CONFIGS[key]
    y = model.dequantize(levels(cfg, b=2)).double()
    jac = per_example_jacobians(lambda t: model.encode(t)[0], y)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(model.encode(y)[1], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("key", ALL_CONFIGS)
def test_gradients_reach_every_parameter(key):
    model, cfg = ready(key), ALL_CONFIGS[key]
    model(levels(cfg)).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", ALL_CONFIGS)
def test_state_dict_round_trip(key):
    model, other = ready(key, seed=0), build_model(ALL_CONFIGS[key])
    other.load_state_dict(model.state_dict())
    x = levels(ALL_CONFIGS[key])
    a = model.bits_per_dim(x, k=2, generator=torch.Generator().manual_seed(3))
    b = other.bits_per_dim(x, k=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("key", ALL_CONFIGS)
def test_sampling_shapes_finite_and_zero_temperature(key):
    model, cfg = ready(key).eval(), ALL_CONFIGS[key]
    for t in (1.0, 0.7):
        y = model.sample(3, temperature=t)
        assert y.shape == (3, *cfg.image_shape) and torch.isfinite(y).all()
    mode = model.sample(3, temperature=0.0)
    assert torch.isfinite(mode).all()
    torch.testing.assert_close(mode, mode[:1].expand_as(mode))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(model.sample(2, generator=g1), model.sample(2, generator=g2))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


def test_forward_training_step_is_finite_at_initialisation():
    """Zero-initialised coupling outputs and bounded scales: the first steps are finite."""
    for key in ALL_CONFIGS:
        torch.manual_seed(0)
        model = build_model(ALL_CONFIGS[key])
        x = levels(ALL_CONFIGS[key], 16)
        initialize_from_batch(model, x)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            loss = model(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss), key
