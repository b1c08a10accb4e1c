"""f-VAE: a VAE whose posterior is an unconditional flow F applied to σ1·u + E(y).

v = σ1·u + E(y), z = F(v), u ~ N(0, I); q(y|z) = N(y; G(F⁻¹(z)), σ2² I) = N(y; G(v), σ2² I).
Per example the negative ELBO is
    ‖G(v) - y‖²/(2σ2²) + D·log σ2 + ½‖z‖² - log|det ∂z/∂u| - ½‖u‖² (+ constants),
    log|det ∂z/∂u| = d·log σ1 + log|det J_F(v)|,
with learned σ1, σ2. Here z has the image's shape (d = D), as in the paper; E and G are
residual conv nets started at the identity (E(y) = y + net(y), zero-initialised last conv), so
training starts from the paper's "case 2", F(σ1·u + y). Sampling: z ~ N(0, T²I),
v = F⁻¹(z), y = G(v).

Reference: Su & Wu, f-VAEs: Improve VAEs with Conditional Flows (2018),
https://arxiv.org/abs/1809.05861
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flows import bpd
from flows.config import ModelConfig
from flows.density import VariationalModel
from flows.importance import repeat_batch
from flows.models.glow import glow_stack
from flows.nets import ResNet


class ResidualMap(nn.Module):
    """y + ResNet(y) on [B, C, H, W]; the identity at initialisation."""

    def __init__(self, channels: int, hidden: int, blocks: int, weight_norm: bool = False):
        super().__init__()
        self.net = ResNet(channels, channels, hidden, blocks, weight_norm=weight_norm)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.net(y)


class FVAE(VariationalModel):
    """f-VAE with encoder E, decoder G, a Glow-style flow F (levels × steps) and σ1, σ2."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        c = cfg.image_shape[0]
        self.encoder = ResidualMap(c, cfg.hidden, cfg.res_blocks, cfg.weight_norm)
        self.decoder = ResidualMap(c, cfg.hidden, cfg.res_blocks, cfg.weight_norm)
        self.flow = glow_stack(cfg, cfg.image_shape)
        sigma = cfg.fvae_sigma_init or 0.5 / cfg.n_bins
        self.log_sigma1 = nn.Parameter(torch.tensor(math.log(sigma)))
        self.log_sigma2 = nn.Parameter(torch.tensor(math.log(sigma)))

    def posterior(self, y: torch.Tensor) -> torch.Tensor:
        return self.encoder(y)

    def _log_joint(self, y: torch.Tensor, mean_v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log q(y|z) + log q(z) + log|det ∂z/∂u| for noise u [N, C, H, W], y, mean_v [N, ...]."""
        v = mean_v + torch.exp(self.log_sigma1) * u
        z, flow_logdet = self.flow.encode(v)
        log_py = bpd.normal_log_prob(y, self.decoder(v), self.log_sigma2).flatten(1).sum(1)
        log_pz = bpd.standard_normal_log_prob(z).sum(1)
        return log_py + log_pz + self.n_dims * self.log_sigma1 + flow_logdet

    def elbo(self, y, post, generator=None) -> torch.Tensor:
        u = bpd.normal(tuple(y.shape), y, generator)
        entropy_u = 0.5 * self.n_dims * (1 + bpd.LOG_2PI)  # -E[log N(u; 0, I)], exact
        return self._log_joint(y, post, u) + entropy_u

    def log_weights(self, y, post, m, generator=None) -> torch.Tensor:
        u = bpd.normal((m * y.shape[0], *y.shape[1:]), y, generator)
        log_qu = bpd.standard_normal_log_prob(u).flatten(1).sum(1)
        lw = self._log_joint(repeat_batch(y, m), repeat_batch(post, m), u) - log_qu
        return lw.view(m, -1)

    def encode_mean(self, y: torch.Tensor) -> torch.Tensor:
        """z = F(E(y)) (u = 0), [B, D]."""
        return self.flow.encode(self.encoder(y))[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """y = G(F⁻¹(z)), [B, C, H, W]."""
        return self.decoder(self.flow.decode(z))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, *, generator=None) -> torch.Tensor:
        return self.decode(self._latent_noise(n, self.n_dims, temperature, generator))
