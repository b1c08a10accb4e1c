"""Conditioner networks. Each is built as `(in_channels, out_channels) -> nn.Module`.

The last layer of every conditioner is zero-initialised, so a coupling starts at (or, for
Glow's sigmoid scale, near) the identity and training does not diverge at step 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from flows.layers.actnorm import ActNorm


class ZeroConv2d(nn.Module):
    """Conv (3×3, 'same' padding) with zero weights and bias; output · exp(3 · logs), logs = 0.

    Reference: Glow's `conv2d_zeros`, https://github.com/openai/glow
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 logscale_factor: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # its scale in out's dtype: a bf16 net's output stays bf16
        return out * torch.exp(self.logs * self.logscale_factor).to(out.dtype)


class FeatureActNorm(nn.Module):
    """ActNorm used as a normalisation of hidden features: returns h' only (no log-det).

    Its ActNorm is data-initialised by `flows.initialize_from_batch` like every other one.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ActNorm(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h)[0]


def _conv(in_channels: int, out_channels: int, kernel: int, actnorm: bool) -> list[nn.Module]:
    """A 'same' conv, bias-free and followed by ActNorm when `actnorm` (ActNorm's bias
    replaces the conv's)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not actnorm)
    return [conv, FeatureActNorm(out_channels)] if actnorm else [conv]


class GlowNet(nn.Sequential):
    """Glow's coupling network: conv3×3 → [ActNorm] → ReLU → conv1×1 → [ActNorm] → ReLU →
    ZeroConv3×3.

    With `actnorm` (the reference code's `conv2d(..., do_actnorm=True)`), each hidden conv is
    bias-free and followed by a data-initialised ActNorm, so the hidden features start at zero
    mean and unit variance per channel. Shapes: [B, in, H, W] -> [B, out, H, W].

    Reference: Glow's `f` in https://github.com/openai/glow (model.py, tfops.py).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, actnorm: bool = True):
        super().__init__(
            *_conv(in_channels, hidden, 3, actnorm),
            nn.ReLU(),
            *_conv(hidden, hidden, 1, actnorm),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )


def _wn(conv: nn.Conv2d, normalise: bool) -> nn.Module:
    """The conv with weight normalisation w = g · v / ‖v‖ (per output channel) when asked."""
    return weight_norm(conv) if normalise else conv


class ResidualBlock(nn.Module):
    """x + conv3×3(ReLU(conv3×3(ReLU(x)))), width preserved (convs weight-normalised when
    `weight_norm`)."""

    def __init__(self, channels: int, weight_norm: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            _wn(nn.Conv2d(channels, channels, 3, padding=1), weight_norm),
            nn.ReLU(),
            _wn(nn.Conv2d(channels, channels, 3, padding=1), weight_norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(nn.Sequential):
    """RealNVP-style s/t network: conv3×3 → `blocks` residual blocks → ReLU → ZeroConv3×3.

    No batch statistics (each example's output depends on that example only), so the
    coupling's Jacobian stays triangular per example. With `weight_norm` every hidden conv is
    weight-normalised (Salimans & Kingma 2016), as in the Real NVP code; the zero-initialised
    output conv is not (a zero weight has no direction). Shapes: [B, in, H, W] -> [B, out, H, W].

    Reference: Dinh et al., Real NVP (2016), section 4.1; weight normalisation:
    https://arxiv.org/abs/1602.07868
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int,
                 weight_norm: bool = False):
        super().__init__(
            _wn(nn.Conv2d(in_channels, hidden, 3, padding=1), weight_norm),
            *[ResidualBlock(hidden, weight_norm) for _ in range(blocks)],
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )


class MLP(nn.Sequential):
    """NICE shift network: `layers` × (Linear → ReLU), then a zero-initialised Linear.

    Shapes: [B, in] -> [B, out].
    """

    def __init__(self, in_features: int, out_features: int, hidden: int, layers: int):
        widths = [in_features] + [hidden] * layers
        body = [m for a, b in zip(widths, widths[1:], strict=False)
                for m in (nn.Linear(a, b), nn.ReLU())]
        last = nn.Linear(hidden, out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*body, last)


def glow_net(hidden: int, actnorm: bool = True):
    """Factory for `GlowNet` of the given width (hidden ActNorms when `actnorm`)."""
    return partial(GlowNet, hidden=hidden, actnorm=actnorm)


def resnet(hidden: int, blocks: int, weight_norm: bool = False):
    """Factory for `ResNet` of the given width and depth (weight-normalised when asked)."""
    return partial(ResNet, hidden=hidden, blocks=blocks, weight_norm=weight_norm)


def mlp(hidden: int, layers: int):
    """Factory for `MLP` of the given width and depth."""
    return partial(MLP, hidden=hidden, layers=layers)


__all__ = ["MLP", "FeatureActNorm", "GlowNet", "ResNet", "ResidualBlock", "ZeroConv2d", "glow_net",
           "mlp", "resnet"]
