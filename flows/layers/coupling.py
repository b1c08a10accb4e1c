"""Coupling layers: one half of h conditions an elementwise map of the other half.

A *partition* says which elements condition and which are transformed (channel halves,
a checkerboard mask, interleaved features); a coupling subclass says only what the
elementwise map is (additive, sigmoid-affine, tanh-affine). The conditioner network comes
from a factory `(in_channels, out_channels) -> nn.Module`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from flows.layers.base import InvertibleLayer, sum_except_batch

NetFactory = Callable[[int, int], nn.Module]


class ChannelPartition(nn.Module):
    """Halves along dim 1 ([B, C, H, W] or [B, D]): the first ⌊C/2⌋ condition the rest.

    `flip=True` swaps the roles, so alternating couplings transform both halves.
    """

    def __init__(self, channels: int, flip: bool = False):
        super().__init__()
        if channels < 2:
            raise ValueError(f"Expected at least 2 channels to split, got {channels}.")
        self.channels, self.flip = channels, flip
        self._first = channels // 2
        sizes = (self._first, channels - self._first)
        self.cond_channels, self.target_channels = sizes[::-1] if flip else sizes

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = h[:, : self._first], h[:, self._first :]
        return (b, a) if self.flip else (a, b)

    def merge(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat((target, cond) if self.flip else (cond, target), 1)

    def restrict(self, param: torch.Tensor) -> torch.Tensor:
        return param


class InterleavedPartition(ChannelPartition):
    """Even features condition odd ones (or the reverse with `flip`), on flat [B, D] inputs.

    Used by NICE on the flattened image, so each half covers the whole picture.
    """

    def __init__(self, features: int, flip: bool = False):
        super().__init__(features, flip)
        order = torch.cat((torch.arange(0, features, 2), torch.arange(1, features, 2)))
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("undo", torch.argsort(order), persistent=False)
        self._first = (features + 1) // 2
        sizes = (self._first, features - self._first)
        self.cond_channels, self.target_channels = sizes[::-1] if flip else sizes

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().split(h[:, self.order])

    def merge(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().merge(cond, target)[:, self.undo]


class CheckerboardPartition(nn.Module):
    """Spatial checkerboard mask on [B, C, H, W]: pixels with (i + j) even condition.

    The network sees h·mask (all channels); the map's parameters are zeroed on the
    conditioning pixels, so those pass through unchanged. `flip=True` swaps the colours.

    Reference: Dinh et al., Density estimation using Real NVP (2016), section 3.4.
    """

    def __init__(self, channels: int, flip: bool = False):
        super().__init__()
        self.channels, self.flip = channels, flip
        self.cond_channels = self.target_channels = channels

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        """1 on conditioning pixels, 0 on transformed ones, shape [1, 1, H, W]."""
        i = torch.arange(h.shape[-2], device=h.device)[:, None]
        j = torch.arange(h.shape[-1], device=h.device)[None, :]
        return ((i + j + int(self.flip)) % 2 == 0).to(h.dtype)[None, None]

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h * self.mask(h), h

    def merge(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return target

    def restrict(self, param: torch.Tensor) -> torch.Tensor:
        return param * (1 - self.mask(param))


class ContextPartition(nn.Module):
    """An inner partition of the first `channels` channels, plus `context_channels` of context.

    h = [h_x, c] along dim 1: the inner partition splits h_x, and the context c joins the
    conditioning part, so the network sees (h_x's conditioning part, c) and only h_x's target
    part changes. The map (h_x, c) -> (f(h_x; c), c) is a bijection of the whole h with the
    same log-det as f, so a conditional coupling keeps the one layer contract (and its
    brute-force Jacobian test). Used by the variational dequantiser q(u | x).
    """

    def __init__(self, inner: ChannelPartition | CheckerboardPartition, context_channels: int):
        super().__init__()
        self.inner, self.context_channels = inner, context_channels
        self.channels = inner.channels + context_channels
        self.cond_channels = inner.cond_channels + context_channels
        self.target_channels = inner.target_channels

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_x, context = h[:, : self.inner.channels], h[:, self.inner.channels :]
        cond, target = self.inner.split(h_x)
        return torch.cat((cond, context), 1), target

    def merge(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inner_cond, context = cond[:, : -self.context_channels], cond[:, -self.context_channels :]
        return torch.cat((self.inner.merge(inner_cond, target), context), 1)

    def restrict(self, param: torch.Tensor) -> torch.Tensor:
        return self.inner.restrict(param)


Partition = ChannelPartition | CheckerboardPartition | ContextPartition


class Coupling(InvertibleLayer):
    r"""Base coupling: (h_a, h_b) -> (h_a, h_b · exp(log_s(h_a)) + t(h_a)).

    log|det| = Σ log_s. Subclasses implement `scale_shift(raw) -> (log_s | None, t)`, the
    elementwise map read off the network output; `None` means volume preserving.

    Args:
        partition: which elements condition and which are transformed.
        net_factory: `(in_channels, out_channels) -> nn.Module` conditioner.
        net_dtype: run the network under bf16 autocast when `torch.bfloat16`; its output is
            cast back so the log-det stays in the input's precision.
        checkpoint_net: recompute the network in backward (activation checkpointing).
    """

    params_per_element = 2

    def __init__(
        self,
        partition: Partition,
        net_factory: NetFactory,
        net_dtype: torch.dtype = torch.float32,
        checkpoint_net: bool = False,
    ):
        super().__init__()
        self.partition = partition
        out = self.params_per_element * partition.target_channels
        self.net = net_factory(partition.cond_channels, out)
        self.net_dtype = net_dtype
        self.checkpoint_net = checkpoint_net

    def scale_shift(self, raw: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError

    def _run_net(self, cond: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(cond.device.type, dtype=torch.bfloat16)
            if self.net_dtype == torch.bfloat16
            else nullcontext()
        )
        with autocast:
            if self.checkpoint_net and self.training and torch.is_grad_enabled():
                raw = checkpoint(self.net, cond, use_reentrant=False)
            else:
                raw = self.net(cond)
        return raw.to(cond.dtype)

    def _params(self, cond: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        log_s, t = self.scale_shift(self._run_net(cond))
        restrict = self.partition.restrict
        return (None if log_s is None else restrict(log_s)), restrict(t)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, x = self.partition.split(h)
        log_s, t = self._params(cond)
        if log_s is None:
            y, logdet = x + t, h.new_zeros(h.shape[0])
        else:
            y, logdet = x * torch.exp(log_s) + t, sum_except_batch(log_s)
        return self.partition.merge(cond, y), logdet

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        cond, y = self.partition.split(h)
        log_s, t = self._params(cond)
        x = y - t if log_s is None else (y - t) * torch.exp(-log_s)
        return self.partition.merge(cond, x)


class AdditiveCoupling(Coupling):
    r"""Additive coupling h_b' = h_b + t(h_a); log|det| = 0.

    Reference: Dinh et al., NICE (2014), https://arxiv.org/abs/1410.8516
    """

    params_per_element = 1

    def scale_shift(self, raw: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, raw


class AffineCoupling(Coupling):
    r"""Affine coupling h_b' = s(h_a) ⊙ h_b + t(h_a); log|det| = Σ log s.

    `scale="sigmoid"` (Glow): s = sigmoid(raw + 2), in (0, 1), ≈0.88 at a zero-initialised
    net — bounded, so training does not blow up at the start.
    `scale="tanh"` (RealNVP): log s = γ_c · tanh(raw) with a learned per-channel γ (init 1).

    References: Glow (2018) https://arxiv.org/abs/1807.03039;
    Real NVP (2016) https://arxiv.org/abs/1605.08803
    """

    def __init__(self, partition: Partition, net_factory: NetFactory, scale: str = "sigmoid",
                 **kwargs):
        super().__init__(partition, net_factory, **kwargs)
        if scale not in ("sigmoid", "tanh"):
            raise ValueError(f"Expected scale 'sigmoid' or 'tanh', got {scale!r}.")
        self.scale = scale
        if scale == "tanh":
            self.tanh_factor = nn.Parameter(torch.ones(partition.target_channels))

    def scale_shift(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = raw.chunk(2, 1)
        if self.scale == "sigmoid":
            return F.logsigmoid(raw_s + 2.0), t
        factor = self.tanh_factor.view(1, -1, *([1] * (raw_s.dim() - 2)))
        return factor * torch.tanh(raw_s), t
