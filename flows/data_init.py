"""Data-dependent initialisation: every ActNorm set from the statistics of one batch."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from flows.layers.actnorm import ActNorm

if TYPE_CHECKING:
    from flows.density import DensityModel


def _unwrap(model: nn.Module) -> DensityModel:
    """The model itself, or the one a DDP-style wrapper holds in `.module`. Checked by the
    pass it must offer (`data_init_pass`): `flows.density` imports this module, so this one
    does not import it back."""
    for inner in (model, getattr(model, "module", None)):
        if isinstance(inner, nn.Module) and hasattr(inner, "data_init_pass"):
            return inner
    raise TypeError(f"Expected a DensityModel, got {type(model).__name__}.")


def uninitialized_actnorms(model: nn.Module) -> list[ActNorm]:
    """The ActNorm layers of `model` not yet initialised from data (their flags read in one
    host sync)."""
    layers = [m for m in model.modules() if isinstance(m, ActNorm)]
    if not layers:
        return []
    flags = torch.stack([m.initialized for m in layers]).tolist()
    return [m for m, done in zip(layers, flags, strict=True) if not done]


def warn_if_uninitialized(model: DensityModel) -> None:
    """Warn when a training-mode pass meets an ActNorm that was never data-initialised (and
    is not being initialised now): it would stay at the identity and cost bits/dim."""
    missing = [m for m in uninitialized_actnorms(model) if not m.is_pending]
    if missing:
        warnings.warn(
            f"{len(missing)} ActNorm layer(s) of this {type(model).__name__} were never "
            "initialised from data: call flows.initialize_from_batch(model, x) on a batch of "
            "training images (>= 256 recommended) before training.",
            UserWarning, stacklevel=4)


@torch.no_grad()
def initialize_from_batch(model: nn.Module, y: torch.Tensor,
                          generator: torch.Generator | int | None = None) -> bool:
    """Data-dependent initialisation (every uninitialised ActNorm) from one batch.

    Runs one no-grad pass in which each such ActNorm sets its bias and log-scale from the
    statistics of its own input, then marks itself initialised (a buffer, so the flag is
    saved, loaded and broadcast). A no-op when everything is initialised already. Call it on
    rank 0's batch before wrapping in DDP, then broadcast parameters and buffers. Glow's code
    uses 256 images.

    y: integer levels [B, C, H, W] (dequantised here, with `generator`) or dequantised floats.
    Returns True when something was initialised.
    """
    model = _unwrap(model)
    pending = uninitialized_actnorms(model)
    if not pending:
        return False
    if not y.is_floating_point():
        y = model.dequantize(y.to(model.device), generator)
    for m in pending:
        m.mark_pending()
    try:
        model.data_init_pass(y.to(model.device))
    finally:
        for m in pending:
            m.clear_pending()
    missed = sum(not m.is_initialized for m in pending)
    if missed:
        raise RuntimeError(f"{missed} ActNorm layer(s) were not reached by data_init_pass.")
    return True
