"""Invertible 1×1 convolutions (Glow, section 3.2), plain and LU-decomposed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flows.layers.base import InvertibleLayer, constant_logdet


def random_rotation(channels: int) -> torch.Tensor:
    """A random orthogonal [C, C] matrix (QR of a Gaussian matrix), Glow's initialisation."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels))
    return q


class _CachedInverse:
    """W⁻¹ for sampling, recomputed whenever any source tensor changed.

    Validity is checked by value (`torch.equal` on clones of the parameters and buffers the
    weight is built from: O(C²), cheap next to the C³ inverse), so an optimizer step, a
    `load_state_dict`, a DDP broadcast, `.to(device)` or any in-place edit invalidates it.
    The cache is used only when no gradient is needed; training always differentiates
    through a fresh inverse.
    """

    def __init__(self) -> None:
        self._sources: list[torch.Tensor] | None = None
        self._value: torch.Tensor | None = None

    def _fresh(self, sources: list[torch.Tensor]) -> bool:
        if self._sources is None or len(self._sources) != len(sources):
            return False
        return all(
            s.device == t.device and s.dtype == t.dtype and s.shape == t.shape
            and torch.equal(s, t)
            for s, t in zip(self._sources, sources, strict=True)
        )

    def get(self, sources: list[torch.Tensor], compute) -> torch.Tensor:
        if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
            return compute()
        if not self._fresh(sources):
            with torch.no_grad():
                self._value = compute()
            self._sources = [s.detach().clone() for s in sources]
        return self._value


class _InvConvBase(InvertibleLayer):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self._inverse_cache = _CachedInverse()

    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def log_abs_det_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _sources(self) -> list[torch.Tensor]:
        return [*self.parameters(recurse=False), *self.buffers(recurse=False)]

    def weight_inverse(self) -> torch.Tensor:
        """W⁻¹, cached between calls while the weights are unchanged (no-grad only)."""
        return self._inverse_cache.get(self._sources(), lambda: torch.linalg.inv(self.weight()))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[1] != self.channels:
            raise ValueError(f"Expected {self.channels} channels, got {h.shape[1]}.")
        out = F.conv2d(h, self.weight()[:, :, None, None])
        positions = h.shape[2] * h.shape[3]
        return out, constant_logdet(self.log_abs_det_weight() * positions, h)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.weight_inverse()[:, :, None, None])


class InvConv1x1(_InvConvBase):
    r"""Invertible 1×1 convolution with a plain weight: h'_{ij} = W h_{ij}.

    log|det| = H·W·log|det W| (through `slogdet`, O(C³)). W starts as a random rotation.
    Shapes: h is [B, C, H, W].

    Reference: Kingma & Dhariwal, Glow (2018), https://arxiv.org/abs/1807.03039
    """

    def __init__(self, channels: int):
        super().__init__(channels)
        self.matrix = nn.Parameter(random_rotation(channels))

    def weight(self) -> torch.Tensor:
        return self.matrix

    def log_abs_det_weight(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.matrix).logabsdet


class InvConv1x1LU(_InvConvBase):
    r"""Invertible 1×1 convolution with an LU-decomposed weight.

    W = P · L · (U + diag(sign_s · exp(log_s))), P a fixed permutation, L unit lower
    triangular, U strictly upper triangular; log|det| = H·W·Σ log_s (O(C)).
    Initialised from the LU decomposition of a random rotation. Shapes: h is [B, C, H, W].

    Reference: Kingma & Dhariwal, Glow (2018), eq. (10), https://arxiv.org/abs/1807.03039
    """

    def __init__(self, channels: int):
        super().__init__(channels)
        p, lower, upper = torch.linalg.lu(random_rotation(channels))
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def log_abs_det_weight(self) -> torch.Tensor:
        return self.log_s.sum()
