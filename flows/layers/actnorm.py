"""Activation normalisation with data-dependent initialisation (Glow, section 3.1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from flows.layers.base import InvertibleLayer, constant_logdet


class ActNorm(InvertibleLayer):
    r"""Per-channel affine map h' = (h + b) · exp(log_s).

    log|det| = (number of positions) · Σ_c log_s_c.

    The first `initialize_from_batch` pass sets b = -mean and log_s = -log(std) per channel, so
    the output has zero mean and unit variance on that batch. The `initialized` flag is a
    registered buffer: it is saved, loaded and broadcast with the weights, so a loaded model is
    never re-initialised.

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
        self._init_pending = False  # set by flows.initialize_from_batch for one pass

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized.item())

    def _view(self, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (h.dim() - 2)))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor) -> None:
        """Set b, log_s from the per-channel statistics of h (all dims but 1)."""
        if h.shape[1] != self.channels:
            raise ValueError(f"Expected {self.channels} channels, got {h.shape[1]}.")
        flat = h.transpose(0, 1).reshape(self.channels, -1).float()
        mean, std = flat.mean(1), flat.std(1, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(1)

    def _logdet(self, h: torch.Tensor) -> torch.Tensor:
        positions = math.prod(h.shape[2:])
        return constant_logdet(self.log_scale.sum() * positions, h)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._init_pending:
            self.initialize(h)
            self._init_pending = False
        out = (h + self._view(self.bias, h)) * torch.exp(self._view(self.log_scale, h))
        return out, self._logdet(h)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(-self._view(self.log_scale, h)) - self._view(self.bias, h)
