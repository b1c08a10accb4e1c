"""Discrete data <-> continuous density: dequantisation, bits/dim, Gaussian log-densities.

For n_bins levels and D = C·H·W dimensions, the model's density p on y = (x + u)/n_bins - 0.5
(u ~ U[0, 1)^D) bounds the discrete likelihood; its cost in bits per dimension is

    bpd = (-log p(y) + D · ln n_bins) / (D · ln 2).

The D·ln n_bins term is the log-Jacobian of the rescaling from the unit-width integer grid to
[-0.5, 0.5)^D.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def check_levels(x: torch.Tensor, n_bins: int) -> None:
    """Raise unless x holds integer levels in [0, n_bins) (reads the values: a host sync)."""
    _check_level_dtype(x, n_bins)
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_bins):
        raise ValueError(
            f"Expected levels in [0, {n_bins}), got values in [{int(x.min())}, {int(x.max())}]; "
            "does n_bins match the dataset manifest?"
        )


def _check_level_dtype(x: torch.Tensor, n_bins: int) -> None:
    if x.is_floating_point() or x.is_complex():
        raise TypeError(
            f"Expected integer levels x (uint8 or long in [0, {n_bins})), got dtype {x.dtype}; "
            "pass continuous y to log_prob instead."
        )


def _check_levels(x: torch.Tensor, n_bins: int) -> None:
    """The dtype always; the values only of CPU tensors in eager mode. Reading a device
    tensor's values would make the host wait for the device on every training step, and a
    compiled graph would break there: callers holding device tensors check the host batch
    before the copy (the training loop, `flows.scoring.score_levels`)."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        check_levels(x, n_bins)
    else:
        _check_level_dtype(x, n_bins)


def as_generator(seed: torch.Generator | int | None) -> torch.Generator | None:
    """A CPU generator from an int seed (so noise is the same on any device); else as given."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def uniform_like(x: torch.Tensor, dtype: torch.dtype,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """U[0, 1) noise of x's shape on x's device, drawn from `generator` where given (on the
    generator's device, then copied: a CPU generator gives the same noise on any device)."""
    if generator is None:  # no `generator=None` argument: Dynamo's dynamic shapes reject it
        return torch.rand(x.shape, device=x.device, dtype=dtype)
    u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=dtype)
    return u.to(x.device)


def normal(shape: tuple[int, ...], like: torch.Tensor,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) noise of `shape` with `like`'s dtype and device, from `generator` where given
    (drawn on the generator's device, then copied, as `uniform_like`)."""
    if generator is None:  # as `uniform_like`: no `generator=None` argument
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def dequantize(x: torch.Tensor, n_bins: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """y = (x + u) / n_bins - 0.5 with u ~ U[0, 1) (`noise` when given): a point in
    [-0.5, 0.5)^D of `dtype` (the model's: a float64 model gets float64 noise and y).
    y has x's memory format, so channels_last levels give channels_last y."""
    _check_levels(x, n_bins)
    if noise is None:
        noise = uniform_like(x, dtype, generator)
    elif noise.shape != x.shape:
        raise ValueError(f"Expected noise of shape {list(x.shape)}, got {list(noise.shape)}.")
    y = (x.to(dtype) + noise.to(x.device, dtype)) / n_bins - 0.5
    return _laid_out_like(y, x)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and not x.is_contiguous()
    if channels_last and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _laid_out_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`t` in x's memory format (`exact_layout`): one-channel levels give contiguous y."""
    return exact_layout(t, _memory_format(x))


def exact_layout(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """`t` with exactly the strides of memory format `fmt` (a copy only where they differ).

    A tensor of one channel is contiguous in both formats whatever its channel stride, so
    `.contiguous()` keeps the stride it came with (a loader's HWC -> CHW view has 1). A conv
    lays out its weight's gradient by its input's strides: the first conv of a one-channel
    model would get a gradient strided unlike its weight, which DDP then copies on every step
    ("Grad strides do not match bucket view strides").
    """
    order = (1, 3, 2, 0) if fmt == torch.channels_last else range(t.dim() - 1, -1, -1)
    exact, step = [0] * t.dim(), 1
    for dim in order:  # innermost first, as torch computes a fresh tensor's strides
        exact[dim], step = step, step * max(t.shape[dim], 1)
    return t if t.stride() == tuple(exact) else t.clone(memory_format=fmt)


def to_levels(y: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Inverse of `dequantize` up to the noise: floor((y + 0.5) · n_bins), clamped, uint8."""
    x = torch.floor((y + 0.5) * n_bins).clamp_(0, n_bins - 1)
    return x.to(torch.uint8)


def bin_centres(x: torch.Tensor, n_bins: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The centre of each level's bin on the y scale: (x + 0.5) / n_bins - 0.5."""
    _check_levels(x, n_bins)
    return _laid_out_like((x.to(dtype) + 0.5) / n_bins - 0.5, x)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  n_bins: int) -> torch.Tensor:
    r"""log P(x) of integer levels under a logistic(mean, e^log_scale) on the y scale,
    discretised into the n_bins bins of [-0.5, 0.5), elementwise.

    P(x) = σ(a) - σ(b) with a, b = (upper, lower edge of x's bin - mean) / s; the first bin
    extends to -∞ and the last to +∞, so the probabilities of all levels sum to 1. Computed
    as log σ(a) + log σ(-b) + log(1 - e^{-(a-b)}) (σ(a) - σ(b) = σ(a)σ(-b)(1 - e^{b-a})),
    stable for any scale. Shapes broadcast; x holds levels in [0, n_bins).

    Reference: Salimans et al., PixelCNN++ (2017), https://arxiv.org/abs/1701.05517
    """
    inv_scale = torch.exp(-log_scale)
    centre = (x.to(mean.dtype) + 0.5) / n_bins - 0.5
    upper = (centre + 0.5 / n_bins - mean) * inv_scale
    lower = (centre - 0.5 / n_bins - mean) * inv_scale
    log_cdf_upper = F.logsigmoid(upper)  # log P(Y < upper edge)
    log_sf_lower = F.logsigmoid(-lower)  # log P(Y > lower edge)
    width = inv_scale / n_bins  # a - b > 0
    middle = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(-width))
    first, last = x == 0, x == n_bins - 1
    return torch.where(first, log_cdf_upper, torch.where(last, log_sf_lower, middle))


def bits_per_dim(log_prob: torch.Tensor, n_dims: int, n_bins: int) -> torch.Tensor:
    """(-log p(y) + D·ln n_bins) / (D·ln 2), elementwise over the batch."""
    return (-log_prob + n_dims * math.log(n_bins)) / (n_dims * math.log(2))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, 1), elementwise."""
    return -0.5 * (z**2 + LOG_2PI)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)²), elementwise."""
    return -0.5 * (((x - mean) * torch.exp(-log_std)) ** 2 + LOG_2PI) - log_std


def kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, 1)) = ½(μ² + σ² - 1) - log σ, elementwise (closed form)."""
    return 0.5 * (mean**2 + torch.exp(2 * log_std) - 1) - log_std
