"""The one layer contract: forward is data -> latent and returns the log-det per example."""

from __future__ import annotations

import torch
from torch import nn


class InvertibleLayer(nn.Module):
    """A bijection h -> h' with a tractable log|det ∂h'/∂h|.

    `forward(h) -> (h', logdet)` maps towards the latent and returns `logdet` of shape [B];
    `inverse(h') -> h` maps back. Subclasses implement both.
    """

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: [B, ...] -> [B]."""
    return t.reshape(t.shape[0], -1).sum(1)


def constant_logdet(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-batch log-det that does not depend on the input: value broadcast to [B]."""
    return value.to(like.dtype).expand(like.shape[0])
