"""Multi-scale stacking of invertible layers, shared by Glow, RealNVP, NICE and f-VAE's flow."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flows.layers.base import InvertibleLayer


class MultiScaleStack(nn.Module):
    r"""Scales of invertible layers; after every scale but the last, half the channels leave.

    encode: for each scale run its layers (summing log-dets); if the scale has `keep = k`,
    channels [k:] are factored out as a latent and the rest go on. The latent z is all factored
    parts, then the last scale's output, each flattened, concatenated in that fixed order:
    z [B, D], and z ~ N(0, I) under the model (priors are layers, see `flows.layers.split`).

    Reference: Dinh et al., Real NVP (2016), section 3.6 (multi-scale architecture).
    """

    def __init__(self, scales: Sequence[Sequence[InvertibleLayer]],
                 keeps: Sequence[int | None], input_shape: tuple[int, ...]):
        super().__init__()
        if len(scales) != len(keeps) or keeps[-1] is not None:
            raise ValueError("Expected one `keep` per scale, None for the last scale.")
        self.scales = nn.ModuleList(nn.ModuleList(layers) for layers in scales)
        self.keeps = list(keeps)
        self.input_shape = tuple(input_shape)
        self.latent_shapes = self._trace_latent_shapes()
        self.latent_sizes = [math.prod(s) for s in self.latent_shapes]
        if sum(self.latent_sizes) != math.prod(self.input_shape):
            raise ValueError(f"Latent sizes {self.latent_sizes} do not add up to the input.")

    @torch.no_grad()
    def _trace_latent_shapes(self) -> list[tuple[int, ...]]:
        _, _, parts = self._encode_parts(torch.zeros(1, *self.input_shape))
        return [tuple(p.shape[1:]) for p in parts]

    def _encode_parts(self, h: torch.Tensor):
        logdet = h.new_zeros(h.shape[0])
        parts = []
        for layers, keep in zip(self.scales, self.keeps, strict=True):
            for layer in layers:
                h, layer_logdet = layer(h)
                logdet = logdet + layer_logdet
            if keep is not None:
                parts.append(h[:, keep:])
                h = h[:, :keep]
        parts.append(h)
        return h, logdet, parts

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, *input_shape] -> (z [B, D], logdet [B])."""
        if tuple(h.shape[1:]) != self.input_shape:
            raise ValueError(f"Expected input shape {self.input_shape}, got {tuple(h.shape[1:])}.")
        _, logdet, parts = self._encode_parts(h)
        return self.join_latent(parts), logdet

    def split_latent(self, z: torch.Tensor) -> list[torch.Tensor]:
        """z [B, D] -> one latent per level, [B, *latent_shapes[i]], in `encode`'s order."""
        if z.dim() != 2 or z.shape[1] != sum(self.latent_sizes):
            raise ValueError(f"Expected z of shape [B, {sum(self.latent_sizes)}], got "
                             f"{tuple(z.shape)}.")
        return [p.reshape(z.shape[0], *s) for p, s in
                zip(z.split(self.latent_sizes, 1), self.latent_shapes, strict=True)]

    def join_latent(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of `split_latent`: per-level latents -> z [B, D]."""
        shapes = [tuple(p.shape[1:]) for p in parts]
        if shapes != self.latent_shapes:
            raise ValueError(f"Expected latents of shapes {self.latent_shapes}, got {shapes}.")
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> [B, *input_shape], the exact inverse of `encode`."""
        parts = self.split_latent(z)
        h = parts.pop()
        for layers, keep in zip(reversed(self.scales), reversed(self.keeps), strict=True):
            if keep is not None:
                h = torch.cat((h, parts.pop()), 1)
            for layer in reversed(layers):
                h = layer.inverse(h)
        return h
