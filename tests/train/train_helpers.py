"""Shared by the train tests: tiny model configs, a quick `train:` section, and an in-process
`fit` for tests of the train stage without Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"  # beside each checkpoint of `in_process_fit`: what it reported

# Small enough that one 2-epoch run on digits (8x8, 17 levels) trains in a second or two.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "glow": {"name": "glow", "levels": 1, "steps": 2, "hidden": 16},
    "realnvp": {"name": "realnvp", "levels": 1, "steps": 1, "hidden": 16, "res_blocks": 1},
    "nice": {"name": "nice", "steps": 2, "hidden": 16, "mlp_layers": 2},
    "vae": {"name": "vae", "levels": 1, "hidden": 16, "latent_dim": 8},
    "fvae": {"name": "fvae", "levels": 1, "steps": 2, "hidden": 16, "res_blocks": 1},
}


def tiny_train(model: str = "glow", **overrides: Any) -> dict[str, Any]:
    """A `train:` section for a quick run (global batch 64: 22 steps per epoch on digits)."""
    section: dict[str, Any] = {
        "model": TINY_MODELS[model],
        "epochs": 2,
        "batch_size": 64,
        "eval_k": 4,
        "log_every": 5,
        "sample_n": 16,
        "optim": {"lr": 2e-3, "warmup_steps": 10},
        "scaling": {"num_workers": 2},
        "collective_timeout_s": 60,
    }
    section.update(overrides)
    return section


def in_process_fit(cfg, job, storage_path: str, name: str):
    """`train.distributed.fit` without Ray, for tests of the train stage: the real loop
    (`train.loop.train`) as rank 0 of 1 in this process, each reported checkpoint copied to
    `{storage_path}/{name}/checkpoint_NNNNNN` with its metrics; a second fit of the same name
    resumes from the latest one, and the best is chosen by Ray's rule
    (`train.distributed.best_checkpoint`) over every checkpoint (Ray keeps the best ones)."""
    from types import SimpleNamespace

    from train.checkpoint import load_state
    from train.ddp import WorkerInfo
    from train.distributed import FitResult, best_checkpoint
    from train.loop import train

    run_path = Path(storage_path) / name
    kept = sorted(run_path.glob("checkpoint_*"))

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        folder = run_path / f"checkpoint_{len(kept):06d}"
        shutil.copytree(checkpoint_dir, folder)
        (folder / METRICS_FILE).write_text(json.dumps(metrics))
        kept.append(folder)

    resume = load_state(kept[-1]) if kept else None
    summary = train(cfg, job, WorkerInfo(rank=0, world_size=1), report, resume)
    local = SimpleNamespace(type_name="local")  # pyarrow's name of the local file system
    ray_like = SimpleNamespace(path=str(run_path), best_checkpoints=[
        (SimpleNamespace(filesystem=local, path=str(folder)),
         json.loads((folder / METRICS_FILE).read_text()))
        for folder in kept
    ])
    best, metrics = best_checkpoint(ray_like)
    return FitResult(name, str(run_path), best, metrics, summary)


def no_cluster(ctx, manifest, storage_path: str) -> None:
    """The train stage's `cluster` for an in-process fit: no Ray to start or check."""
