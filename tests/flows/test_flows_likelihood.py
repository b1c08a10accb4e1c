"""The discrete likelihood: bounds on an enumerable model, the discretised logistic, the
variational dequantiser's log-density, float64 models, the ActNorm-initialisation warning."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from flows_helpers import per_example_jacobians, perturb_, tiny

from flows import build_model, initialize_from_batch
from flows.bpd import discretized_logistic_log_prob
from flows.layers import Coupling, OrderedSqueeze

SHAPE, BINS = (1, 2, 2), 3  # 3**4 = 81 images: every image can be scored
ALL_IMAGES = torch.tensor(list(itertools.product(range(BINS), repeat=4)),
                          dtype=torch.uint8).view(81, *SHAPE)


def log_p_hat(model, k: int, repeats: int = 16, seed: int = 0) -> torch.Tensor:
    """`repeats` independent k-sample estimates log P̂_k(x) of all 81 images, [repeats, 81]
    nats, through the scoring path (`bits_per_dim`)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bpd = torch.stack([model.bits_per_dim(ALL_IMAGES, k=k, generator=g).double()
                           for _ in range(repeats)])
    return -bpd * 4 * math.log(2)


def check_bounds_rise_towards(exact: torch.Tensor, model) -> None:
    """E[log P̂_k] (averaged over the 81 images) rises with k, stays below log P(x) and
    comes close to it; the tolerances are 3 standard errors of the Monte Carlo means."""
    means, errors = {}, {}
    for k in (1, 4, 16, 64):
        per_repeat = log_p_hat(model, k).mean(1)  # [repeats]
        means[k] = per_repeat.mean().item()
        errors[k] = 3 * per_repeat.std().item() / math.sqrt(len(per_repeat))
    target = exact.mean().item()
    gaps = {k: target - means[k] for k in means}
    assert all(gaps[k] > -errors[k] for k in gaps), (gaps, errors)  # below log P(x)
    assert means[1] < means[4] < means[16] < means[64] + errors[64], (means, errors)
    assert gaps[1] > 0.01, "no Jensen gap: the test model is too flat to show anything"
    assert gaps[64] < 0.2 * gaps[1], gaps  # approaches log P(x)


def cell_log_probs(model, points: int = 6) -> torch.Tensor:
    """log P(x) = log ∫_cell(x) p(y) dy for all 81 images by tensor Gauss-Legendre quadrature
    (`points` per dimension), [81] nats."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    nodes = torch.tensor((nodes + 1) / 2, dtype=torch.float64)  # on [0, 1]
    weights = torch.tensor(weights / 2, dtype=torch.float64)
    grid_u = torch.cartesian_prod(*[nodes] * 4)  # [points^4, 4]
    log_w = torch.log(torch.cartesian_prod(*[weights] * 4)).sum(1)
    out = []
    with torch.no_grad():
        for x in ALL_IMAGES.double().view(81, 4):
            y = ((x + grid_u) / BINS - 0.5).view(-1, *SHAPE)
            log_p = model.log_prob(y)
            out.append(torch.logsumexp(log_p + log_w, 0) - 4 * math.log(BINS))
    return torch.stack(out)


def enumerable_flow(name: str, scale: float, **kw):
    torch.manual_seed(0)
    model = build_model(tiny(name, SHAPE, BINS, levels=1, steps=2, hidden=8, **kw)).double()
    initialize_from_batch(model, ALL_IMAGES)  # ActNorm standardises: p varies inside a cell
    return perturb_(model, scale=scale, seed=1).eval()


VARIATIONAL = {"dequantization": "variational", "dequant_hidden": 8, "dequant_steps": 2}


@pytest.mark.parametrize("name,scale,kw", [("glow", 0.05, {}),
                                           ("realnvp", 0.1, {"res_blocks": 1}),
                                           ("glow", 0.03, VARIATIONAL)],
                         ids=["glow", "realnvp", "glow-variational"])
def test_enumerable_flow_sums_to_at_most_one_and_k_samples_approach_it(name, scale, kw):
    model = enumerable_flow(name, scale, **kw)
    exact = cell_log_probs(model)
    assert 0.2 < exact.exp().sum().item() <= 1.0 + 1e-9  # mass outside the cube is lost
    check_bounds_rise_towards(exact, model)


def enumerable_vae():
    torch.manual_seed(0)
    cfg = tiny("vae", SHAPE, BINS, levels=1, hidden=8, latent_dim=2)
    return perturb_(build_model(cfg).double(), scale=0.3, seed=2).eval()


def vae_log_probs(model, points: int = 40) -> torch.Tensor:
    """log P(x) = log ∫ P(x|z) N(z; 0, I) dz by Gauss-Hermite quadrature over the 2-d z."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)  # weight e^{-z²/2}
    z = torch.cartesian_prod(*[torch.tensor(nodes, dtype=torch.float64)] * 2)
    log_w = torch.log(torch.cartesian_prod(*[torch.tensor(weights / math.sqrt(2 * math.pi),
                                                          dtype=torch.float64)] * 2)).sum(1)
    with torch.no_grad():
        mean, log_scale = model.decoder(z)
        x = ALL_IMAGES[:, None].long()  # [81, 1, C, H, W] against [1, N, C, H, W]
        log_px_z = discretized_logistic_log_prob(x, mean[None], log_scale[None], BINS)
        return torch.logsumexp(log_px_z.flatten(2).sum(2) + log_w, 1)


def test_enumerable_discrete_vae_sums_to_one_and_k_samples_approach_it():
    model = enumerable_vae()
    exact = vae_log_probs(model)
    torch.testing.assert_close(exact.exp().sum().item(), 1.0, atol=1e-6, rtol=0)
    check_bounds_rise_towards(exact, model)


def test_discretised_logistic_vae_probabilities_of_one_pixel_sum_to_one():
    """Vary one pixel over all levels, the rest fixed: Σ_l P(x_l | z) = Π_{j≠i} P(x_j | z)."""
    cfg = tiny("vae", (1, 4, 4), 16, levels=1, hidden=8, latent_dim=4)
    model = perturb_(build_model(cfg), scale=0.3).eval()
    z = torch.randn(3, 4)
    x = torch.randint(0, 16, (3, 1, 4, 4))
    with torch.no_grad():
        mean, log_scale = model.decoder(z)
        per_pixel = discretized_logistic_log_prob(x, mean, log_scale, 16)  # [3, 1, 4, 4]
        for i in (0, 5, 15):
            images = x.repeat(16, 1, 1, 1, 1).view(16 * 3, 1, 16)
            images[:, 0, i] = torch.arange(16).repeat_interleave(3)
            y = model.sample_dequantization(images.view(-1, 1, 4, 4))[0]
            log_p = model._log_likelihood(y, z.repeat(16, 1)) - 16 * math.log(16)
            total = torch.logsumexp(log_p.view(16, 3), 0)
            others = per_pixel.flatten(1).sum(1) - per_pixel.flatten(1)[:, i]
            torch.testing.assert_close(total, others, atol=1e-4, rtol=0)


@pytest.mark.parametrize("log_scale", [-12.0, -3.0, 0.0, 4.0])
@pytest.mark.parametrize("mean", [-3.0, -0.5, 0.1, 0.49, 2.0])
def test_discretised_logistic_sums_to_one_at_any_location_and_scale(mean, log_scale):
    x = torch.arange(256)
    log_p = discretized_logistic_log_prob(x, torch.tensor(mean, dtype=torch.float64),
                                          torch.tensor(log_scale, dtype=torch.float64), 256)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0).item(), 0.0, atol=1e-9, rtol=0)


def test_variational_dequantiser_log_density_matches_the_brute_force_jacobian():
    """log q(u|x) = log N(ε) - log|det ∂u/∂ε| (ε -> u per example, x fixed), in float64."""
    cfg = tiny("glow", (2, 4, 4), 16, levels=1, steps=1, hidden=8,
               dequantization="variational", dequant_hidden=8, dequant_steps=3)
    model = perturb_(build_model(cfg), scale=0.2).double()
    x = torch.randint(0, 16, (2, 2, 4, 4))
    eps = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y, log_q = model.sample_dequantization(x, noise=eps)
    assert y.dtype == torch.float64 and torch.equal(model.to_levels(y), x.to(torch.uint8))
    jac = per_example_jacobians(lambda e: model.sample_dequantization(x, noise=e)[0] * 16, eps)
    log_n = (-0.5 * (eps**2 + math.log(2 * math.pi))).flatten(1).sum(1)
    expected = log_n - torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(log_q, expected, atol=1e-6, rtol=0)


def test_variational_dequantisation_trains_q_through_the_objective():
    cfg = tiny("realnvp", (1, 4, 4), 16, levels=1, steps=1, hidden=8, res_blocks=1,
               dequantization="variational", dequant_hidden=8, dequant_steps=2)
    model = build_model(cfg)
    x = torch.randint(0, 16, (8, 1, 4, 4))
    initialize_from_batch(model, x)
    model(x).mean().backward()
    grads = [p.grad for p in model.dequantizer.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_ordered_squeeze_halves_are_checkerboards_over_all_colours():
    c = 3
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    colour = ((i + j) % 2).float().expand(1, c, 4, 4)  # 0 on "even" pixels, 1 on odd
    out, _ = OrderedSqueeze()(colour)
    assert (out[:, : 2 * c] == 0).all() and (out[:, 2 * c :] == 1).all()
    tagged = torch.arange(c).float().view(1, c, 1, 1).expand(1, c, 4, 4)
    squeezed, _ = OrderedSqueeze()(tagged)
    first_half = squeezed[0, : 2 * c, 0, 0]
    assert set(first_half.tolist()) == set(range(c))  # every colour in each half


def conditioning_pixels(scale, shape) -> list[tuple[str, frozenset[int]]]:
    """(partition kind, input pixels its conditioning half holds) of each coupling of one
    scale, in order: pixel ids 1..D are carried through the scale's permutations (squeezes),
    and a coupling's `partition.split` shows which of them it conditions on."""
    ids = torch.arange(1, math.prod(shape) + 1, dtype=torch.float64).view(1, *shape)
    found = []
    for layer in scale:
        if isinstance(layer, Coupling):
            cond, _ = layer.partition.split(ids)
            found.append((type(layer.partition).__name__,
                          frozenset(int(v) for v in cond.flatten().tolist() if v)))
        elif type(layer).__name__ in ("Squeeze", "SqueezeOrder"):
            ids, _ = layer(ids)
    return found


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4)])
@pytest.mark.parametrize("squeeze", ["ordered", "plain"])
def test_realnvp_channel_couplings_condition_on_other_pixels_than_the_checkerboard(shape,
                                                                                   squeeze):
    """Per scale, 3 checkerboard couplings then (after the plain squeeze) 3 channel-wise
    ones: the paper alternates two mask types, so no channel-wise coupling may condition on
    the pixel set of a checkerboard coupling (after the ordered squeeze they all did)."""
    model = build_model(tiny("realnvp", shape, levels=2, steps=3, hidden=4, res_blocks=1,
                             squeeze=squeeze))
    found = conditioning_pixels(model.stack.scales[0], shape)
    kinds = [kind for kind, _ in found]
    assert kinds == ["CheckerboardPartition"] * 3 + ["ChannelPartition"] * 3
    checkerboard = {pixels for kind, pixels in found if kind == "CheckerboardPartition"}
    channel = {pixels for kind, pixels in found if kind == "ChannelPartition"}
    half = math.prod(shape) // 2
    assert len(checkerboard) == 2 and len(channel) == 2  # each kind alternates its halves
    assert all(len(pixels) == half for pixels in checkerboard | channel)
    assert not checkerboard & channel, "channel-wise couplings repeat the checkerboard mask"


@pytest.mark.parametrize("key", ["glow", "realnvp", "vae", "fvae", "glow-variational"])
def test_a_float64_model_scores_in_float64(key):
    name, _, variant = key.partition("-")
    extra = {"dequantization": "variational", "dequant_hidden": 8} if variant else {}
    cfg = tiny(name, levels=1, steps=1, hidden=8, res_blocks=1, latent_dim=4, **extra)
    model = build_model(cfg)
    x = torch.randint(0, 16, (4, 2, 4, 4))
    initialize_from_batch(model, x)
    model = model.eval()
    noise = torch.randn(x.shape) if variant else torch.rand(x.shape)  # the one draw, fixed
    single = model.bits_per_dim(x, generator=0, noise=noise)
    model = model.double()
    assert model.dequantize(x).dtype == torch.float64
    double = model.bits_per_dim(x, generator=0, noise=noise)
    assert double.dtype == torch.float64
    if model.exact:  # VAE / f-VAE also draw latents, in the model's dtype: other numbers
        torch.testing.assert_close(double.float(), single, atol=1e-4, rtol=0)
    assert torch.isfinite(model.bits_per_dim(x, k=3, generator=0)).all()


def _count_warnings(fn) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sum("initialize_from_batch" in str(w.message) for w in caught)


def test_training_without_actnorm_initialisation_warns_once():
    cfg = tiny("glow", levels=1, steps=2, hidden=8)
    x = torch.randint(0, 16, (4, 2, 4, 4))
    model = build_model(cfg)
    assert _count_warnings(lambda: model(x)) == 1
    assert _count_warnings(lambda: model(x)) == 0  # once per model
    initialised = build_model(cfg)
    initialize_from_batch(initialised, x)
    assert _count_warnings(lambda: initialised(x)) == 0
    evaluating = build_model(cfg).eval()
    assert _count_warnings(lambda: evaluating(x)) == 0
