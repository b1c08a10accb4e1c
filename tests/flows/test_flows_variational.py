"""VAE and f-VAE bounds: ELBO ≤ IWAE, closed-form KL, the f-VAE loss, chunked IWAE."""

from __future__ import annotations

import math

import pytest
import torch
from flows_helpers import VARIATIONAL_CONFIGS, perturb_, tiny

from flows import build_model, initialize_from_batch
from flows.bpd import kl_to_standard_normal, normal_log_prob, standard_normal_log_prob
from flows.importance import importance_bound


def ready(key, scale=0.1):
    cfg = VARIATIONAL_CONFIGS[key]
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.n_bins, (8, *cfg.image_shape))
    initialize_from_batch(model, x)
    perturb_(model, scale)
    return model, model.dequantize(x, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key", VARIATIONAL_CONFIGS)
def test_elbo_is_below_the_importance_weighted_bound_on_average(key):
    model, y = ready(key)
    with torch.no_grad():
        elbo = torch.stack([model.log_prob(y) for _ in range(40)]).mean()
        iwae = torch.stack([model.log_prob(y, k=16) for _ in range(8)]).mean()
    assert elbo < iwae, (elbo.item(), iwae.item())


def test_closed_form_kl_matches_monte_carlo():
    mean = torch.tensor([[0.0, 1.5, -0.7], [2.0, 0.0, 0.3]], dtype=torch.float64)
    log_std = torch.tensor([[0.0, -0.5, 0.4], [0.2, -1.0, 0.0]], dtype=torch.float64)
    z = mean + torch.exp(log_std) * torch.randn(200_000, *mean.shape, dtype=torch.float64)
    mc = (normal_log_prob(z, mean, log_std) - standard_normal_log_prob(z)).mean(0)
    torch.testing.assert_close(kl_to_standard_normal(mean, log_std), mc, atol=0.02, rtol=0)
    assert kl_to_standard_normal(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_vae_posterior_kl_matches_monte_carlo():
    model, y = ready("vae")
    with torch.no_grad():
        mean, log_std = model.posterior(y)
        z = mean + torch.exp(log_std) * torch.randn(50_000, *mean.shape)
        mc = (normal_log_prob(z, mean, log_std) - standard_normal_log_prob(z)).sum(-1).mean(0)
    closed = kl_to_standard_normal(mean, log_std).sum(1)
    torch.testing.assert_close(closed, mc, atol=0.05, rtol=0.02)


def test_fvae_elbo_is_the_su_wu_loss():
    """-ELBO = ‖G(v) - y‖²/(2σ2²) + D·log σ2 + ½‖z‖² - D·log σ1 - log|det J_F(v)|
    - D/2 (the constants: D/2·ln 2π twice, minus the entropy of u, D/2·(1 + ln 2π))."""
    model, y = ready("fvae")
    d = y[0].numel()
    with torch.no_grad():
        got = model.log_prob(y, generator=torch.Generator().manual_seed(4))
        u = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
        s1, s2 = model.log_sigma1.exp(), model.log_sigma2.exp()
        v = model.encoder(y) + s1 * u
        z, flow_logdet = model.flow.encode(v)
        loss = ((model.decoder(v) - y).flatten(1).square().sum(1) / (2 * s2**2)
                + d * torch.log(s2) + 0.5 * z.square().sum(1)
                - d * torch.log(s1) - flow_logdet
                + d / 2 * math.log(2 * math.pi) - d / 2)
    torch.testing.assert_close(got, -loss, atol=1e-3, rtol=1e-5)


def test_importance_bound_in_chunks_equals_the_direct_log_mean_exp():
    log_w = torch.randn(10, 3) * 5
    cursor = iter(range(0, 10))

    def draw(m):
        start = next(cursor)
        for _ in range(m - 1):
            next(cursor)
        return log_w[start:start + m]

    got = importance_bound(draw, k=10, chunk=3)
    torch.testing.assert_close(got, torch.logsumexp(log_w, 0) - math.log(10))
    with pytest.raises(ValueError, match="k >= 1"):
        importance_bound(draw, k=0, chunk=3)


@pytest.mark.parametrize("name", ["vae", "fvae"])
def test_large_k_is_evaluated_in_chunks(name):
    cfg = tiny(name, levels=1, steps=1, hidden=8, res_blocks=1, latent_dim=4, iwae_chunk=8)
    model = build_model(cfg)
    seen = []
    net = model.decoder
    net.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].shape[0]))
    y = model.dequantize(torch.randint(0, 16, (4, 2, 4, 4)))
    with torch.no_grad():
        bound = model.log_prob(y, k=100)
    assert torch.isfinite(bound).all() and bound.shape == (4,)
    assert max(seen) == 8 * 4 and sum(seen) == 100 * 4


@pytest.mark.parametrize("key", VARIATIONAL_CONFIGS)
def test_importance_weights_average_to_the_elbo(key):
    """E_q[log w] = ELBO: the k>1 path (sampled log q) and the k=1 path (closed-form KL /
    entropy) must estimate the same number."""
    model, y = ready(key, scale=0.05)
    if key == "vae":
        with torch.no_grad():  # a posterior clearly narrower than the prior: σ ≈ 0.37
            model.encoder.head.bias[model.latent_dim:] = -1.0
    with torch.no_grad():
        post = model.posterior(y)
        log_w = model.log_weights(y, post, 2000, None).mean(1)  # batch means, [2000]
        elbo = torch.stack([model.elbo(y, post, None).mean() for _ in range(400)])
    std_err = (log_w.var() / len(log_w) + elbo.var() / len(elbo)).sqrt().item()
    assert abs(log_w.mean().item() - elbo.mean().item()) < 4 * std_err + 1e-3, std_err
