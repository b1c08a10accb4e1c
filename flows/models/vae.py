"""VAE: Gaussian encoder q(z|y), N(0, I) prior, and a decoder over the image.

ELBO = E_q[log p(y|z)] - KL(q(z|y) ‖ N(0, I)) with the closed-form KL, one reparameterised
sample z = μ + σ ⊙ ε. `log_prob(y, k)` for k > 1 is the importance-weighted bound.

Decoder (`vae_likelihood`): `logistic` (default) is a discretised logistic over the levels x,
P(x|z) = Π_i [σ((x_i⁺ - μ_i)/s_i) - σ((x_i⁻ - μ_i)/s_i)] with x_i^± the edges of x_i's bin
(the outer bins open to ±∞), so the bits/dim bounds -log P(x) itself. The model sees x
through its bin centres (its "dequantisation" adds no noise), and its density on y is
piecewise constant: log p(y|z) = log P(x|z) + D·ln n_bins with x = the levels of y.
`gaussian` is N(y; μ, s²) on uniformly dequantised y, whose mass outside a pixel's bin range
[-0.5, 0.5) is wasted.

References: Kingma & Welling, Auto-Encoding Variational Bayes (2013),
https://arxiv.org/abs/1312.6114; Burda et al., IWAE (2015), https://arxiv.org/abs/1509.00519;
discretised logistic: Salimans et al., PixelCNN++ (2017), https://arxiv.org/abs/1701.05517
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flows import bpd
from flows.config import ModelConfig
from flows.density import VariationalModel
from flows.importance import repeat_batch

# decoder scale s ≥ e^-7 ≈ 9.1e-4 on the y scale: a floor against collapse, not finer than
# every bin. At 256 levels a bin is 1/256 ≈ 3.9e-3 wide, only 4.3 s, so a logistic centred
# on its bin holds at most 2σ(0.5/(256 s)) - 1 = 0.79 of it: the decoder costs at least
# 0.34 bits per dim however good the latent (Gaussian likelihood, y uniform in the bin:
# 0.33). At 17 and 32 levels the floor costs < 1e-6 bits.
MIN_LOG_SCALE = -7.0


class ConvEncoder(nn.Module):
    """[B, C, H, W] -> (mean, log_std) [B, d]: conv, `levels` stride-2 convs, linear."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, levels: int, latent_dim: int):
        super().__init__()
        c, h, w = shape
        down = [m for _ in range(levels)
                for m in (nn.ReLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1))]
        self.body = nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), *down, nn.ReLU(),
                                  nn.Flatten())
        self.head = nn.Linear(hidden * (h >> levels) * (w >> levels), 2 * latent_dim)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.body(y)).chunk(2, 1)
        return mean, log_std


class ConvDecoder(nn.Module):
    """z [B, d] -> (mean, log_scale) [B, C, H, W]: linear, `levels` transposed convs, conv."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, levels: int, latent_dim: int):
        super().__init__()
        c, h, w = shape
        up = [m for _ in range(levels)
              for m in (nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1))]
        self.body = nn.Sequential(
            nn.Linear(latent_dim, hidden * (h >> levels) * (w >> levels)),
            nn.Unflatten(1, (hidden, h >> levels, w >> levels)),
            *up, nn.ReLU(), nn.Conv2d(hidden, 2 * c, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.body(z).chunk(2, 1)
        return mean, MIN_LOG_SCALE + F.softplus(raw - MIN_LOG_SCALE)


class VAE(VariationalModel):
    """Convolutional VAE with a `latent_dim` vector latent."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        args = (cfg.image_shape, cfg.hidden, cfg.levels, cfg.latent_dim)
        self.encoder, self.decoder = ConvEncoder(*args), ConvDecoder(*args)
        self.latent_dim = cfg.latent_dim
        self.discrete = cfg.vae_likelihood == "logistic"

    def sample_dequantization(self, x, generator=None, noise=None):
        """Discrete decoder: y is the bin centre of x (no noise, log q = 0); else uniform."""
        if not self.discrete:
            return super().sample_dequantization(x, generator, noise)
        y = bpd.bin_centres(x, self.n_bins, self.dtype)
        return y, y.new_zeros(y.shape[0])

    def posterior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(y)

    def _log_likelihood(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(y | z) [B]: the density on y (discrete: log P(x|z) + D·ln n_bins)."""
        mean, log_scale = self.decoder(z)
        if not self.discrete:
            return bpd.normal_log_prob(y, mean, log_scale).flatten(1).sum(1)
        x = bpd.to_levels(y, self.n_bins)
        log_px = bpd.discretized_logistic_log_prob(x, mean, log_scale, self.n_bins)
        return log_px.flatten(1).sum(1) + self.n_dims * math.log(self.n_bins)

    def elbo(self, y, post, generator=None) -> torch.Tensor:
        mean, log_std = post
        z = mean + torch.exp(log_std) * bpd.normal(mean.shape, mean, generator)
        kl = bpd.kl_to_standard_normal(mean, log_std).sum(1)
        return self._log_likelihood(y, z) - kl

    def log_weights(self, y, post, m, generator=None) -> torch.Tensor:
        mean, log_std = post
        eps = bpd.normal((m, *mean.shape), mean, generator)
        z = mean + torch.exp(log_std) * eps
        log_pz = bpd.standard_normal_log_prob(z).sum(-1)
        log_qz = (bpd.standard_normal_log_prob(eps) - log_std).sum(-1)
        log_py = self._log_likelihood(repeat_batch(y, m), z.reshape(-1, self.latent_dim))
        return log_py.view(m, -1) + log_pz - log_qz

    def encode_mean(self, y: torch.Tensor) -> torch.Tensor:
        """The posterior mean of z, [B, d]."""
        return self.encoder(y)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder mean of y given z, [B, C, H, W]."""
        return self.decoder(z)[0]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, *, generator=None) -> torch.Tensor:
        """Decoder means at z ~ N(0, T²I) (the usual VAE picture, without pixel noise)."""
        return self.decode(self._latent_noise(n, self.latent_dim, temperature, generator))
