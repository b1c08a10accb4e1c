"""Elementwise bijections: RealNVP's logit preprocessing and NICE's diagonal scaling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flows.layers.base import InvertibleLayer, constant_logdet, sum_except_batch


class LogitTransform(InvertibleLayer):
    r"""Logit preprocessing of y ∈ [-0.5, 0.5): p = α + (1 - 2α)(y + 0.5), h = log(p / (1 - p)).

    log|det| = Σ [log(1 - 2α) - log p - log(1 - p)]; part of the model, so it counts in bpd.
    α keeps p away from 0 and 1. Shapes: any [B, ...].

    Reference: Dinh et al., Real NVP (2016), section 4.1, https://arxiv.org/abs/1605.08803
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"Expected 0 < alpha < 0.5, got {alpha}.")
        self.alpha = alpha

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (h + 0.5)
        out = torch.log(p) - torch.log1p(-p)
        # -log p - log(1 - p) = softplus(-out) + softplus(out), stable for any out
        per_element = math.log(1 - 2 * self.alpha) + F.softplus(-out) + F.softplus(out)
        return out, sum_except_batch(per_element)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha) - 0.5


class DiagonalScale(InvertibleLayer):
    r"""h' = h ⊙ exp(log_s), one learned log-scale per element; log|det| = Σ log_s.

    NICE's final scaling layer (starts at the identity). Shapes: h is [B, *shape].

    Reference: Dinh et al., NICE (2014), section 3.3, https://arxiv.org/abs/1410.8516
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(tuple(shape)))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h * torch.exp(self.log_scale), constant_logdet(self.log_scale.sum(), h)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(-self.log_scale)


class Sigmoid(InvertibleLayer):
    r"""h' = σ(h) elementwise, onto (0, 1); log|det| = Σ log σ(h)(1 - σ(h)).

    The last layer of the variational dequantiser (a flow onto the unit cube).
    log σ(h)(1 - σ(h)) = -softplus(-h) - softplus(h), stable for any h. Shapes: any [B, ...].

    Reference: Ho et al., Flow++ (2019), section 3.1, https://arxiv.org/abs/1902.00275
    """

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(h), sum_except_batch(-F.softplus(-h) - F.softplus(h))

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return torch.logit(h)
