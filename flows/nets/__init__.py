"""Conditioner networks. Each is built as `(in_channels, out_channels) -> nn.Module`.

The last layer of every conditioner is zero-initialised, so a coupling starts at (or, for
Glow's sigmoid scale, near) the identity and training does not diverge at step 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn


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
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class GlowNet(nn.Sequential):
    """Glow's coupling network: conv3×3 → ReLU → conv1×1 → ReLU → ZeroConv3×3.

    Shapes: [B, in, H, W] -> [B, out, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )


class ResidualBlock(nn.Module):
    """x + conv3×3(ReLU(conv3×3(ReLU(x)))), width preserved."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(nn.Sequential):
    """RealNVP-style s/t network: conv3×3 → `blocks` residual blocks → ReLU → ZeroConv3×3.

    No batch statistics (each example's output depends on that example only), so the
    coupling's Jacobian stays triangular per example. Shapes: [B, in, H, W] -> [B, out, H, W].

    Reference: Dinh et al., Real NVP (2016), section 4.1.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            *[ResidualBlock(hidden) for _ in range(blocks)],
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


def glow_net(hidden: int):
    """Factory for `GlowNet` of the given width."""
    return partial(GlowNet, hidden=hidden)


def resnet(hidden: int, blocks: int):
    """Factory for `ResNet` of the given width and depth."""
    return partial(ResNet, hidden=hidden, blocks=blocks)


def mlp(hidden: int, layers: int):
    """Factory for `MLP` of the given width and depth."""
    return partial(MLP, hidden=hidden, layers=layers)


__all__ = ["MLP", "GlowNet", "ResNet", "ResidualBlock", "ZeroConv2d", "glow_net", "mlp", "resnet"]
