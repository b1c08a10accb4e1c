"""Activation normalisation with data-dependent initialisation (Glow, section 3.1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from flows.layers.base import InvertibleLayer


class ActNorm(InvertibleLayer):
    r"""Per-channel affine map h' = (h + b) · exp(log_s).

    log|det| = (number of positions) · Σ_c log_s_c.

    `initialize_from(h)` sets b = -mean and log_s = -log(std) per channel, so the output has
    zero mean and unit variance on h. A layer `mark_pending()` does that on its next forward
    input (how `flows.initialize_from_batch` reaches every ActNorm in one pass). The
    `initialized` flag is a registered buffer: it is saved, loaded and broadcast with the
    weights, so a loaded model is never re-initialised.

    Shapes: h is [B, C, *] (images [B, C, H, W] or flat features [B, C]).

    Reference: Kingma & Dhariwal, Glow (2018), https://arxiv.org/abs/1807.03039
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._pending = False  # initialise from the next forward input (then clear)

    @property
    def is_initialized(self) -> bool:
        """Whether b and log_s were set from data (or loaded from a model that was)."""
        return bool(self.initialized.item())

    @property
    def is_pending(self) -> bool:
        """Whether the next forward pass initialises this layer from its input."""
        return self._pending

    def mark_pending(self) -> None:
        """Initialise from the next forward input, even when initialised already."""
        self._pending = True

    def clear_pending(self) -> None:
        """Take back `mark_pending` (a pass that never reached this layer)."""
        self._pending = False

    def mark_initialized(self) -> None:
        """Set the flag without data: b and log_s as they are count as initialised."""
        self.initialized.fill_(1)

    def _view(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (h.dim() - 2)))

    @torch.no_grad()
    def initialize_from(self, h: torch.Tensor) -> None:
        """Set b, log_s from the per-channel statistics of h (all dims but 1); set the flag."""
        if h.shape[1] != self.channels:
            raise ValueError(f"Expected {self.channels} channels, got {h.shape[1]}.")
        flat = h.transpose(0, 1).reshape(self.channels, -1).float()
        mean, std = flat.mean(1), flat.std(1, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.mark_initialized()
        self.clear_pending()

    def _logdet(self, h: torch.Tensor) -> torch.Tensor:
        """In the parameters' precision, whatever h's (a bf16 net's features)."""
        positions = math.prod(h.shape[2:])
        return (self.log_scale.sum() * positions).expand(h.shape[0])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h' in h's dtype: inside a bf16 coupling net the features stay bf16 (b and e^log_s
        are cast to it; float32 parameters would promote h' to float32)."""
        if self._pending:
            self.initialize_from(h)
        bias, scale = self.bias.to(h.dtype), torch.exp(self.log_scale).to(h.dtype)
        out = (h + self._view(bias, h)) * self._view(scale, h)
        return out, self._logdet(h)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(-self._view(self.log_scale, h)) - self._view(self.bias, h)
