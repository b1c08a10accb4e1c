"""Test bits/dim over a whole split, shared by all ranks; sample grids for the eye."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from data_prep import Manifest, make_loader
from flows.scoring import score_levels
from train.ddp import WorkerInfo, all_reduce_sum
from train.seeding import derive_seed


@torch.no_grad()
def evaluate(
    model: nn.Module,
    manifest: Manifest,
    world: WorkerInfo,
    *,
    batch_size: int,
    seed: int,
    split: str = "test",
    k: int = 1,
) -> float:
    """Mean bits/dim over every sample of `split` (k > 1: the k-draw importance-weighted
    bound).

    Each rank scores its own part of the split (`mode="eval"`: every sample exactly once over
    all ranks) under a fixed dequantization seed; the ranks' (Σ bpd, count) are summed.
    """
    loader = make_loader(
        manifest, split, batch_size, rank=world.rank, world_size=world.world_size, mode="eval"
    )
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    device = torch.device(world.device)
    noise = torch.Generator(device).manual_seed(derive_seed(seed, "eval", split, k, world.rank))
    for x, _ in loader:
        bpd = score_levels(model, x.to(device), k=k, generator=noise)
        total += float(bpd.sum())
        count += bpd.size
    model.train(was_training)
    total, count = all_reduce_sum([total, count], world)
    if count == 0:
        raise ValueError(f"split {split!r} of {manifest.path} has no samples to evaluate")
    return total / count


@torch.no_grad()
def save_samples(
    model: nn.Module,
    out_dir: Path,
    *,
    epoch: int,
    temperatures: tuple[float, ...],
    n: int,
    seed: int,
    device: str,
) -> list[Path]:
    """One PNG grid of `n` samples per temperature, drawn under a fixed seed."""
    from flows.viz import save_sample_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    was_training = model.training
    model.eval()
    for temperature in temperatures:
        path = out_dir / f"samples_epoch{epoch:03d}_T{temperature:g}.png"
        noise = torch.Generator(device).manual_seed(derive_seed(seed, "samples", temperature))
        save_sample_grid(model, path, n=n, temperature=temperature, nrow=8, generator=noise)
        paths.append(path)
    model.train(was_training)
    return paths
