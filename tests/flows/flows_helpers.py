"""Shared checks for the flows tests: perturbation off the identity, Jacobians, tiny configs."""

from __future__ import annotations

import torch
from torch import nn

from flows import ModelConfig
from flows.layers import ActNorm


@torch.no_grad()
def perturb_(module: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Move every parameter off its (often identity) init and mark ActNorms initialised."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.mark_initialized()
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖."""
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def per_example_jacobians(fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobians [B, D_out, D_in] of fn (batch -> batch) at x, checking examples don't mix."""
    b = x.shape[0]
    jac = torch.autograd.functional.jacobian(fn, x, vectorize=True)
    jac = jac.reshape(b, -1, b, x[0].numel())
    blocks = torch.stack([jac[i, :, i] for i in range(b)])
    off = jac.clone()
    for i in range(b):
        off[i, :, i] = 0
    assert off.abs().max() == 0, "examples of a batch influence each other"
    return blocks


def tiny(name: str, shape=(2, 4, 4), n_bins: int = 16, **kw) -> ModelConfig:
    return ModelConfig(name=name, image_shape=shape, n_bins=n_bins, **kw)


#: Exact-flow configs small enough for float64 brute-force Jacobians.
EXACT_CONFIGS = {
    "glow-affine-lu": tiny("glow", levels=2, steps=2, hidden=8),
    "glow-additive-plain-3x8x8": tiny("glow", (3, 8, 8), levels=2, steps=1, hidden=8,
                                      coupling="additive", invconv="plain", learn_prior=False),
    "glow-bf16-nets-checkpointed": tiny("glow", levels=1, steps=2, hidden=8,
                                        net_dtype="bfloat16", checkpoint_nets=True),
    "glow-logit": tiny("glow", (1, 4, 4), levels=1, steps=2, hidden=8, preprocess="logit"),
    "realnvp-affine": tiny("realnvp", levels=2, steps=1, hidden=8, res_blocks=1),
    "realnvp-additive": tiny("realnvp", (1, 4, 4), levels=1, steps=2, hidden=8,
                             res_blocks=1, coupling="additive"),
    "nice": tiny("nice", steps=3, hidden=16, mlp_layers=2),
    "nice-none": tiny("nice", (1, 3, 3), steps=2, hidden=8, mlp_layers=1, preprocess="none"),
}

VARIATIONAL_CONFIGS = {
    "vae": tiny("vae", levels=1, hidden=8, latent_dim=4),
    "fvae": tiny("fvae", levels=1, steps=2, hidden=8, res_blocks=1),
}

ALL_CONFIGS = {**EXACT_CONFIGS, **VARIATIONAL_CONFIGS}
