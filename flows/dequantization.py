"""Variational dequantisation: a learned noise distribution q(u | x) on [0, 1)^D (Flow++).

With uniform noise the flow's bits/dim bounds the discrete likelihood by
-log P(x) <= E_u[-log p(y)] + D·ln n_bins, y = (x + u)/n_bins - 0.5, and the bound is loose
wherever p varies inside a bin. A conditional flow q(u | x) tightens it:

    -log P(x) <= E_{u~q}[log q(u|x) - log p(y)] + D·ln n_bins,

with q trained jointly with the flow (uniform q is the special case log q = 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flows import bpd
from flows.layers.coupling import AffineCoupling, CheckerboardPartition, ContextPartition
from flows.layers.elementwise import Sigmoid
from flows.nets import glow_net


class VariationalDequantizer(nn.Module):
    r"""q(u | x) on (0, 1)^D: u = σ(g(ε; c(x))), ε ~ N(0, I), by change of variables

        log q(u|x) = log N(ε; 0, I) - log|det ∂h/∂ε| - Σ log σ(h)(1 - σ(h)),  h = g(ε; c).

    c(x) is a conv feature map of the bin centres of x; g is `steps` affine couplings with
    tanh-bounded scales on alternating checkerboards, each conditioned on (the other pixels of
    ε, c) through `ContextPartition`; σ is the `Sigmoid` layer. ε is first scaled by 1.702
    (σ(1.702 ε) ≈ Φ(ε), which is uniform), and the couplings start at the identity, so
    training starts from (nearly) uniform dequantisation.

    Shapes: x integer levels [B, C, H, W] -> (y [B, C, H, W] in [-0.5, 0.5), log q [B]).

    Reference: Ho et al., Flow++ (2019), section 3.1, https://arxiv.org/abs/1902.00275
    """

    def __init__(self, shape: tuple[int, int, int], n_bins: int, hidden: int, steps: int):
        super().__init__()
        c = shape[0]
        self.n_bins = n_bins
        self.context = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        )
        net = glow_net(hidden, actnorm=False)
        self.couplings = nn.ModuleList(
            AffineCoupling(ContextPartition(CheckerboardPartition(c, flip=j % 2 == 1), hidden),
                           net, scale="tanh")
            for j in range(steps)
        )
        self.squash = Sigmoid()

    #: σ(1.702·t) ≈ Φ(t) within 0.01 (the logistic-probit approximation): q starts ≈ uniform
    PROBIT_SCALE = 1.702

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log q(u|x)); `noise` is the base draw ε (standard normal, x's shape) if given."""
        dtype = self.context[0].weight.dtype
        eps = bpd.normal(tuple(x.shape), self.context[0].weight, generator) if noise is None \
            else noise.to(x.device, dtype)
        if eps.shape != x.shape:
            raise ValueError(f"Expected noise of shape {list(x.shape)}, got {list(eps.shape)}.")
        h = torch.cat((self.PROBIT_SCALE * eps,
                       self.context(bpd.bin_centres(x, self.n_bins, dtype))), 1)
        log_q = (bpd.standard_normal_log_prob(eps).flatten(1).sum(1)
                 - eps[0].numel() * math.log(self.PROBIT_SCALE))
        for coupling in self.couplings:
            h, logdet = coupling(h)
            log_q = log_q - logdet
        u, logdet = self.squash(h[:, : x.shape[1]])
        # σ rounds to 1.0 for h > ~17 in float32; keep u in [0, 1) so y stays in x's bin
        u = u.clamp(max=1.0 - torch.finfo(u.dtype).eps)
        return bpd.dequantize(x, self.n_bins, dtype=dtype, noise=u), log_q - logdet
