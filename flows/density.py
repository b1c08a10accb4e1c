"""The density interface every model family implements: DensityModel, and its two kinds,
FlowModel (exact) and VariationalModel (a bound). See docs/contracts.md."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from flows import bpd
from flows.config import ModelConfig
from flows.data_init import warn_if_uninitialized
from flows.dequantization import VariationalDequantizer
from flows.importance import importance_bound, repeat_batch

if TYPE_CHECKING:
    from flows.models.stack import MultiScaleStack


class DensityModel(nn.Module):
    """A density over continuous images y ∈ [-0.5, 0.5)^D, scored on discrete levels x.

    Subclasses implement `log_prob(y, k)` and `sample(n, temperature)`; dequantisation
    (uniform, or a learned q(u|x) with `dequantization: variational`), bits/dim, the
    importance-weighted bound and level conversion are shared. `forward(x)` is the training
    objective (bits/dim per example), so a DDP wrapper can call the model directly.
    """

    exact: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.image_shape: tuple[int, int, int] = tuple(config.image_shape)
        self.n_bins: int = config.n_bins
        self.n_dims = math.prod(self.image_shape)
        self.dequantizer = None
        if config.dequantization == "variational":
            self.dequantizer = VariationalDequantizer(self.image_shape, self.n_bins,
                                                      config.dequant_hidden, config.dequant_steps)
        self._init_checked = False  # whether the ActNorm-initialisation check has run

    def _apply(self, fn, recurse=True):
        """Every `.to(...)`, `.double()`…, then the weights of convs that read one channel back
        in exactly contiguous strides (`bpd.exact_layout`): `.to(memory_format=channels_last)`
        gives them a channel stride of 1, but the one-channel images they read are laid out
        contiguous, and their gradients with them (DDP: "Grad strides do not match bucket
        view strides")."""
        super()._apply(fn, recurse)
        for param in self.parameters():
            if param.dim() == 4 and param.shape[1] == 1:
                param.data = bpd.exact_layout(param.data, torch.contiguous_format)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the weights (noise and y are drawn in it)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def _check_y(self, y: torch.Tensor) -> None:
        if tuple(y.shape[1:]) != self.image_shape:
            raise ValueError(f"Expected y of shape [B, {', '.join(map(str, self.image_shape))}],"
                             f" got {list(y.shape)}.")
        # never inside a compiled graph: the check reads every ActNorm's flag on the host
        # (`train.ddp.wrap_for_training` runs it before it compiles the model)
        if not torch.compiler.is_compiling() and self.training and not self._init_checked:
            self._init_checked = True
            warn_if_uninitialized(self)

    def dequantize(self, x: torch.Tensor, generator: torch.Generator | int | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
        """y = (x + u) / n_bins - 0.5 with u ~ q(u|x) (uniform unless variational): `noise`
        when given (u itself for uniform, the base draw ε for variational), else drawn (from
        `generator` / seed where given). y keeps x's memory format (channels_last)."""
        return self.sample_dequantization(x, generator, noise)[0]

    def sample_dequantization(self, x: torch.Tensor,
                              generator: torch.Generator | int | None = None,
                              noise: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log q(u|x) [B]): one dequantisation and its log-density (0 for uniform)."""
        generator = bpd.as_generator(generator)
        if self.dequantizer is not None:
            return self.dequantizer(x, generator, noise)
        y = bpd.dequantize(x, self.n_bins, generator, self.dtype, noise)
        return y, y.new_zeros(y.shape[0])

    def to_levels(self, y: torch.Tensor) -> torch.Tensor:
        """Continuous y -> integer levels x (uint8)."""
        return bpd.to_levels(y, self.n_bins)

    def log_prob(self, y: torch.Tensor, k: int = 1, *,
                 generator: torch.Generator | int | None = None) -> torch.Tensor:
        """log p(y) in nats, [B]: exact for flows, the ELBO (k=1) / IWAE bound (k>1) else."""
        raise NotImplementedError

    def bound(self, x: torch.Tensor, generator: torch.Generator | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """One-draw lower bound on log P(x) + D·ln n_bins, [B]: log p(y) - log q(u|x) for
        y from one dequantisation (for VAE / f-VAE log p(y) is their ELBO)."""
        y, log_q = self.sample_dequantization(x, generator, noise)
        return self.log_prob(y, generator=generator) - log_q

    def importance_log_weights(self, x: torch.Tensor, m: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
        """[m, B] log-weights of m independent draws (of u, and of the latents for VAE /
        f-VAE); their log-mean-exp bounds log P(x) + D·ln n_bins (Burda et al. 2015)."""
        y, log_q = self.sample_dequantization(repeat_batch(x, m), generator)
        return (self.log_prob(y, generator=generator) - log_q).view(m, -1)

    def bits_per_dim(self, x: torch.Tensor, k: int = 1, *,
                     generator: torch.Generator | int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """(-log P̂_k(x)) / (D·ln 2), [B], with log P̂_k the importance-weighted bound

            log P̂_k(x) = log (1/k) Σ_i p(y_i, z_i) / (q(u_i|x) q(z_i|y_i)) - D·ln n_bins

        over k draws of the dequantisation u_i (and latents z_i for VAE / f-VAE); k = 1 is
        the usual bound (VAE / f-VAE: their ELBO, with its closed-form terms). The bound
        rises with k towards log P(x). `generator` (a torch.Generator or an int seed) drives
        every draw, so evaluation is reproducible with it; `noise` fixes the one draw of k=1.
        """
        generator = bpd.as_generator(generator)
        if k == 1:
            log_w = self.bound(x, generator, noise)
        elif noise is not None:
            raise ValueError(f"`noise` fixes one draw; k={k} draws its own.")
        else:
            log_w = importance_bound(lambda m: self.importance_log_weights(x, m, generator), k,
                                     self.config.iwae_chunk)
        return bpd.bits_per_dim(log_w, self.n_dims, self.n_bins)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The training objective: bits/dim of integer levels x per example, [B].

        The one objective every trainer uses (take `.mean()` for the loss): x is dequantised
        here (with `noise` when given, else a fresh draw; a variational dequantiser q(u|x) is
        trained through it), so a DDP wrapper around the model sees the whole computation.
        """
        return self.bits_per_dim(x, noise=noise)

    def sample(self, n: int, temperature: float = 1.0, *,
               generator: torch.Generator | int | None = None) -> torch.Tensor:
        """n images y [n, C, H, W], latents drawn at the given temperature (no grad)."""
        raise NotImplementedError

    def data_init_pass(self, y: torch.Tensor) -> None:
        """One pass that visits every data-dependent layer (see `initialize_from_batch`)."""
        self.log_prob(y)

    def _latent_noise(self, n: int, d: int, temperature: float,
                      generator: torch.Generator | None) -> torch.Tensor:
        if temperature < 0:
            raise ValueError(f"Expected temperature >= 0, got {temperature}.")
        like = next(p for p in self.parameters() if p.is_floating_point())
        return bpd.normal((n, d), like, bpd.as_generator(generator)) * temperature


class FlowModel(DensityModel):
    """An exact flow: log p(y) = log N(z; 0, I) + log|det ∂z/∂y|, z = encode(y)."""

    exact = True

    def __init__(self, config: ModelConfig, stack: MultiScaleStack):
        super().__init__(config)
        self.stack = stack

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y [B, C, H, W] -> (z [B, D], logdet [B]); logdet includes the learned priors."""
        self._check_y(y)
        return self.stack.encode(y)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> y [B, C, H, W]."""
        return self.stack.decode(z)

    def log_prob(self, y: torch.Tensor, k: int = 1, *,
                 generator: torch.Generator | int | None = None) -> torch.Tensor:
        """Exact log p(y) [B]; `k` and `generator` are accepted for a uniform API, unused."""
        z, logdet = self.encode(y)
        return bpd.standard_normal_log_prob(z).sum(1) + logdet

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, *,
               generator: torch.Generator | int | None = None) -> torch.Tensor:
        return self.decode(self._latent_noise(n, self.n_dims, temperature, generator))


class VariationalModel(DensityModel):
    """A latent-variable model scored by a bound: ELBO for k=1, IWAE bound for k>1.

    Subclasses implement `posterior(y)` (whatever the encoder computes once per batch),
    `elbo(y, post, generator)` (closed-form terms where they exist),
    `log_weights(y, post, m, generator) -> [m, B]` (log p(y, z) - log q(z | y) for m draws),
    `encode_mean(y) -> z [B, d]` and `decode(z) -> y`.
    """

    exact = False

    def posterior(self, y: torch.Tensor):
        raise NotImplementedError

    def elbo(self, y: torch.Tensor, post, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def log_weights(self, y: torch.Tensor, post, m: int,
                    generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def importance_log_weights(self, x: torch.Tensor, m: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
        """[m, B]: log p(y_i, z_i) - log q(z_i | y_i) - log q(u_i | x), one latent draw per
        dequantisation draw, so the k-sample bound is over (u, z) jointly."""
        self._check_y(x)
        y, log_q = self.sample_dequantization(repeat_batch(x, m), generator)
        log_w = self.log_weights(y, self.posterior(y), 1, generator)[0]
        return (log_w - log_q).view(m, -1)

    def log_prob(self, y: torch.Tensor, k: int = 1, *,
                 generator: torch.Generator | int | None = None) -> torch.Tensor:
        self._check_y(y)
        generator = bpd.as_generator(generator)
        post = self.posterior(y)
        if k == 1:
            return self.elbo(y, post, generator)
        return importance_bound(lambda m: self.log_weights(y, post, m, generator), k,
                                self.config.iwae_chunk)
