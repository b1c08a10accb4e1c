"""Learned Gaussian priors written as invertible layers.

A Gaussian prior N(h; μ, σ²) equals a standard normal on z = (h - μ)/σ plus log|det| = -Σ log σ.
Writing the priors this way keeps one contract: the model's latent z is N(0, I) under the
model, `encode` returns (z, logdet) with the prior's log-scales inside logdet, and sampling at
temperature T (z ~ N(0, T²I)) draws every latent from N(μ, (Tσ)²), as Glow does.
"""

from __future__ import annotations

import torch
from torch import nn

from flows.layers.base import InvertibleLayer, constant_logdet, sum_except_batch
from flows.nets import ZeroConv2d


class SplitPrior(InvertibleLayer):
    r"""Glow's split: the second half of the channels gets a conditional Gaussian prior.

    h = (h_1, h_2) with h_1 the first ⌊C/2⌋ channels; (μ, log σ) = ZeroConv3×3(h_1);
    forward returns (h_1, (h_2 - μ)/σ) with log|det| = -Σ log σ. The model then factors the
    second half out as a latent and continues with h_1. The conv is zero-initialised, so the
    prior starts as N(0, I). Shapes: h is [B, C, H, W].

    Reference: Kingma & Dhariwal, Glow (2018), https://arxiv.org/abs/1807.03039
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"Expected at least 2 channels to split, got {channels}.")
        self.channels = channels
        self.keep = channels // 2
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))

    def _mean_log_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.prior(kept).chunk(2, 1)
        return mean, log_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, rest = h[:, : self.keep], h[:, self.keep :]
        mean, log_scale = self._mean_log_scale(kept)
        z = (rest - mean) * torch.exp(-log_scale)
        return torch.cat((kept, z), 1), -sum_except_batch(log_scale)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        kept, z = h[:, : self.keep], h[:, self.keep :]
        mean, log_scale = self._mean_log_scale(kept)
        return torch.cat((kept, z * torch.exp(log_scale) + mean), 1)


class LearnedPrior(InvertibleLayer):
    r"""Unconditional learned Gaussian prior on the top latent: z = (h - μ) · exp(-log σ).

    μ and log σ have the latent's shape and start at zero (N(0, I)); log|det| = -Σ log σ.
    Shapes: h is [B, *shape].

    Reference: Glow's `learntop` prior, https://arxiv.org/abs/1807.03039
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)
        self.mean = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.zeros(self.shape))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (h - self.mean) * torch.exp(-self.log_scale)
        return z, constant_logdet(-self.log_scale.sum(), h)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(self.log_scale) + self.mean
