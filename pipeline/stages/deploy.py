"""deploy stage: pull `models:/NAME@champion` back from the registry and smoke-test it.

Loads the model through nfpipe's load path (`deploy.load.load_served`: weights and config
only, checked against the version's recorded sha256; no code from the artifact runs), draws a
sample grid, and scores the first `deploy.smoke_images` test images through it. Serving itself
is `nfpipe deploy serve` (or `mlflow models serve`).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from pipeline.stages.base import StageContext, StageOutputs
from tracking import use_store

GRID_MIN_PX = 256  # the smoke grid's longer side at least: a 42 px grid of 8x8 digits is a dot


def run(ctx: StageContext) -> StageOutputs:
    from deploy.load import load_served
    from flows.viz import save_level_grid

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # rich owns the console
    cfg = ctx.config.deploy
    promoted = ctx.inputs["promote"]
    use_store(ctx.tracking_uri)
    if promoted.get("champion_version") is None:
        ctx.console.print(f"    {promoted['model_name']} has no {cfg.alias}; nothing to deploy")
        return {"model_uri": None, "version": None, "sample_grid": None, "scores": None}
    uri = f"models:/{promoted['model_name']}@{cfg.alias}"
    model, info = load_served(uri)
    levels = model.run_request(None, {"mode": "sample", "n": cfg.smoke_samples,
                                      "temperature": cfg.temperature, "seed": cfg.seed})
    grid = save_level_grid(levels, model.n_bins, ctx.stage_dir / "samples.png",
                           scale=grid_scale(np.shape(levels)))
    scores = _smoke_scores(model, promoted.get("manifest"), cfg.smoke_images, cfg.seed)
    scores_path = ctx.stage_dir / "scores.json"
    scores_path.write_text(json.dumps({"model_uri": uri, "version": info["version"],
                                       **scores}, indent=2) + "\n")
    mean = scores.get("mean_bpd")
    shown = "no test images" if mean is None else f"mean bpd {mean:.4f} on {scores['count']}"
    ctx.console.print(f"    {uri} (v{info['version']}): {grid.name}, {shown} test images")
    return {"model_uri": uri, "version": info["version"], "sample_grid": str(grid),
            "scores": str(scores_path), "mean_bpd": mean}


def grid_scale(shape: tuple[int, ...]) -> int:
    """The `deploy sample --scale` (1..64) that makes a grid of images [n, C, H, W] at least
    GRID_MIN_PX on its longer side."""
    from flows.viz import grid_shape

    n, _, h, w = shape
    return min(64, max(1, math.ceil(GRID_MIN_PX / max(grid_shape(n, (h, w))))))


def _smoke_scores(model, manifest_path: str | None, n: int, seed: int) -> dict:
    """Bits/dim of the first `n` test images through the pulled model."""
    if not manifest_path:
        return {"count": 0, "mean_bpd": None, "bpd": []}
    from data_prep import Manifest, make_loader

    manifest = Manifest.load(manifest_path)
    batch = min(n, model.limits.max_batch)
    x, _ = next(iter(make_loader(manifest, "test", batch, mode="eval")))
    bpd = model.run_request(x.numpy(), {"seed": seed})
    return {"count": len(bpd), "mean_bpd": float(np.mean(bpd)), "bpd": bpd.tolist()}
