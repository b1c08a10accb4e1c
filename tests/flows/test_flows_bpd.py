"""bits/dim against hand-computed values, and the dequantisation it rests on."""

from __future__ import annotations

import math

import pytest
import torch
from flows_helpers import tiny

from flows import bpd, build_model


def test_bpd_formula_known_answer():
    # log p = -D/2·ln(2π) (a standard normal at 0), n_bins = 17:
    # bpd = ½·log2(2π) + log2(17) = 1.3257480647 + 4.0874628413 = 5.4132109060
    d = 64
    log_prob = torch.tensor([-0.5 * d * math.log(2 * math.pi)], dtype=torch.float64)
    assert bpd.bits_per_dim(log_prob, d, 17).item() == pytest.approx(5.4132109060, abs=1e-9)
    # a uniform density on the cube (log p = 0) costs exactly log2(n_bins) bits
    uniform = bpd.bits_per_dim(torch.zeros(1, dtype=torch.float64), d, 256)
    assert uniform.item() == pytest.approx(8.0, abs=1e-12)


def test_identity_nice_scores_a_standard_normal_at_zero():
    # NICE without preprocessing starts as the identity: log p(0) = -D/2·ln(2π)
    model = build_model(tiny("nice", (1, 8, 8), n_bins=17, preprocess="none"))
    y = torch.zeros(2, 1, 8, 8)
    log_prob = model.log_prob(y)
    torch.testing.assert_close(log_prob, torch.full((2,), -32 * math.log(2 * math.pi)))
    value = bpd.bits_per_dim(log_prob, 64, 17)
    torch.testing.assert_close(value, torch.full((2,), 5.4132109060, dtype=torch.float32))


@pytest.mark.parametrize("invconv", ["lu", "plain"])
def test_glow_additive_at_init_is_a_rotation_of_a_standard_normal(invconv):
    """Squeezes, rotations and zero-initialised additive couplings/priors preserve ‖y‖ and
    volume, so bits_per_dim(x) = (½‖y‖² + D/2·ln 2π + D·ln n) / (D·ln 2) with y the
    dequantised x, computed here by hand from the same noise."""
    cfg = tiny("glow", (3, 8, 8), n_bins=32, levels=2, steps=2, hidden=8, coupling="additive",
               invconv=invconv)
    model = build_model(cfg)
    x = torch.randint(0, 32, (3, 3, 8, 8))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    y = (x + u) / 32 - 0.5
    d = 3 * 8 * 8
    expected = (0.5 * y.flatten(1).square().sum(1) + d / 2 * math.log(2 * math.pi)
                + d * math.log(32)) / (d * math.log(2))
    got = model.bits_per_dim(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_dequantize_range_and_reproducibility():
    x = torch.tensor([[0, 1, 16]], dtype=torch.uint8).view(1, 1, 1, 3)
    y = bpd.dequantize(x, 17, torch.Generator().manual_seed(0))
    lo, hi = x / 17 - 0.5, (x + 1) / 17 - 0.5
    assert ((y >= lo) & (y < hi)).all()
    again = bpd.dequantize(x, 17, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, again, rtol=0, atol=0)
    assert torch.equal(bpd.to_levels(y, 17), x)
    assert bpd.to_levels(torch.tensor([-3.0, 3.0]), 17).tolist() == [0, 16]


def test_dequantize_rejects_bad_levels_with_clear_errors():
    with pytest.raises(ValueError, match=r"levels in \[0, 17\).*n_bins"):
        bpd.dequantize(torch.tensor([0, 17]), 17)
    with pytest.raises(TypeError, match="integer levels"):
        bpd.dequantize(torch.rand(3), 17)


def test_evaluation_noise_is_reproducible_with_a_generator():
    model = build_model(tiny("glow", levels=1, steps=1, hidden=8))
    x = torch.randint(0, 16, (4, 2, 4, 4))
    a = model.bits_per_dim(x, generator=torch.Generator().manual_seed(1))
    b = model.bits_per_dim(x, generator=torch.Generator().manual_seed(1))
    c = model.bits_per_dim(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(model.bits_per_dim(x, generator=1), a, rtol=0, atol=0)
    assert not torch.equal(a, c)
