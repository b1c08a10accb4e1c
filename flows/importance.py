"""The importance-weighted bound: log-mean-exp of k importance weights, drawn in chunks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def importance_bound(log_weights: Callable[[int], torch.Tensor], k: int,
                     chunk: int) -> torch.Tensor:
    r"""log (1/k Σ_i w_i) from log-weights drawn `chunk` at a time: memory O(chunk), not O(k).

    `log_weights(m)` returns [m, B]. Reference: Burda et al., Importance Weighted
    Autoencoders (2015), https://arxiv.org/abs/1509.00519
    """
    if k < 1:
        raise ValueError(f"Expected k >= 1 importance samples, got {k}.")
    total = None
    for start in range(0, k, chunk):
        part = torch.logsumexp(log_weights(min(chunk, k - start)), 0)
        total = part if total is None else torch.logaddexp(total, part)
    return total - math.log(k)


def repeat_batch(t: torch.Tensor, m: int) -> torch.Tensor:
    """[B, ...] -> [m·B, ...], sample-major (row i·B + b is copy i of example b)."""
    return t.unsqueeze(0).expand(m, *t.shape).reshape(m * t.shape[0], *t.shape[1:])
