"""The one evaluation path: bits/dim over a whole split of a manifest, and sample grids.

The train loop (every rank, each evaluated epoch) and the evaluate stage (one process) both
call `evaluate` and `save_samples`, so a test bpd or a grid means the same whichever wrote it.
Every random draw comes from a CPU generator with a derived seed and is copied to the model's
device (`flows.scoring`): a seed gives the same numbers on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data_prep import Manifest, make_loader
from flows.scoring import score_levels
from flows.viz import save_sample_grid
from train.ddp import WorkerInfo, all_reduce_sum
from train.seeding import derive_seed


@dataclass(frozen=True)
class SplitScore:
    """The mean bits/dim of a split and how many images it averages (over all ranks)."""

    bpd: float
    images: int


def eval_noise(seed: int, split: str, k: int, rank: int) -> torch.Generator:
    """The CPU noise stream of one rank's share of `split` at k draws per image."""
    return torch.Generator().manual_seed(derive_seed(seed, "eval", split, k, rank))


@torch.no_grad()
def evaluate(model: nn.Module, manifest: Manifest, world: WorkerInfo, *,
             batch_size: int, seed: int, split: str = "test", k: int = 1) -> SplitScore:
    """Mean bits/dim over every sample of `split` (k > 1: the k-draw importance-weighted
    bound), for any world size (1: this process scores the whole split).

    Each rank scores its own part (`mode="eval"`: every sample exactly once over all ranks)
    under its stream `eval_noise(seed, split, k, rank)`; the ranks' (Σ bpd, count) are summed.
    An empty split or a non-finite mean is a ValueError (on every rank alike).
    """
    loader = make_loader(
        manifest, split, batch_size, rank=world.rank, world_size=world.world_size, mode="eval"
    )
    noise = eval_noise(seed, split, k, world.rank)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            bpd = score_levels(model, x, k=k, generator=noise)
            total += float(bpd.sum())
            count += bpd.size
    finally:
        model.train(was_training)
    total, count = all_reduce_sum([total, count], world)
    if count == 0:
        raise ValueError(f"split {split!r} of {manifest.location} is empty; nothing to evaluate")
    mean = total / count
    if not math.isfinite(mean):
        raise ValueError(f"{split} bits/dim is {mean}: the model gives non-finite likelihoods")
    return SplitScore(mean, int(count))


@torch.no_grad()
def save_samples(model: nn.Module, out_dir: Path, *, temperatures: tuple[float, ...], n: int,
                 seed: int, prefix: str = "samples") -> list[Path]:
    """One PNG grid `{prefix}_T{t}.png` of `n` samples per temperature t (none when n = 0),
    each from its own CPU stream `derive_seed(seed, "samples", t)`."""
    if n == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        return [save_sample_grid(model, out_dir / f"{prefix}_T{t:g}.png", n=n, temperature=t,
                                 generator=derive_seed(seed, "samples", t))
                for t in temperatures]
    finally:
        model.train(was_training)
