"""deploy stage: pull `models:/NAME@champion` back from the registry and smoke-test it.

Loads the model through nfpipe's load path (`deploy.load.load_served`: weights and config
only, checked against the version's recorded sha256; no code from the artifact runs), draws a
sample grid, and scores the first `deploy.smoke_images` test images through it. Then the
papers' two latent-space pictures from the pulled model: `interp.png`, an interpolation strip
from the first test image to the next one of another class (the second when the set has no
classes; Glow Fig. 5), and `manipulate.png`, the first test image
not of the model's first attribute moved along that attribute's direction (Glow Fig. 6; for
digits the class "0", one-vs-rest), both logged under `deploy/` to the registered version's
run. Serving itself is `nfpipe deploy serve` (or `mlflow models serve`).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from pipeline.stages.base import StageContext, StageOutputs
from tracking import use_store

GRID_MIN_PX = 256  # the smoke grid's longer side at least: a 42 px grid of 8x8 digits is a dot
PICTURE_IMAGES = 16  # test images the pictures are chosen from
INTERPOLATION_STEPS = 8  # frames between the two test images
ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)  # the manipulation row's multiples


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
    pictures = latent_pictures(model, promoted.get("manifest"), ctx.stage_dir)
    if pictures:
        _log_pictures(ctx, info["run_id"], list(pictures.values()))
        ctx.console.print(f"    {', '.join(p.name for p in pictures.values())} (logged under "
                          f"deploy/ to run {info['run_id']})")
    return {"model_uri": uri, "version": info["version"], "sample_grid": str(grid),
            "scores": str(scores_path), "mean_bpd": mean,
            **{key: str(path) for key, path in pictures.items()}}


def latent_pictures(scorer, manifest_path: str | None, folder) -> dict:
    """{"interpolation": interp.png, "manipulation": manipulate.png} (module doc); the
    manipulation only when the model has attribute directions, neither without test images."""
    from data_prep import Manifest, make_loader
    from flows.attributes import manipulate
    from flows.latents import interpolate

    if not manifest_path:
        return {}
    manifest = Manifest.load(manifest_path)
    x, y = (t.numpy() for t in next(iter(make_loader(manifest, "test", PICTURE_IMAGES,
                                                       mode="eval"))))
    if len(x) < 2:
        return {}
    other = next((i for i in range(1, len(x)) if y[i] != y[0]), 1)  # another class if any
    strip = interpolate(scorer.model, x[0], x[other], steps=INTERPOLATION_STEPS)
    pictures = {"interpolation": _row(strip, scorer.n_bins, folder / "interp.png")}
    if scorer.directions is not None and scorer.directions.names:
        attribute = scorer.directions.names[0]
        start = x[_first_without(manifest, attribute)]
        row = manipulate(scorer.model, start, scorer.directions.get(attribute), ALPHAS)
        pictures["manipulation"] = _row(row, scorer.n_bins, folder / "manipulate.png")
    return pictures


def _first_without(manifest, attribute: str) -> int:
    """The index of the first of the PICTURE_IMAGES test images without `attribute` (0 when
    the shards do not label it, or all have it)."""
    from data_prep.labels import attribute_names, labelled_batches

    names = attribute_names(manifest)
    if attribute not in names:
        return 0
    _, has = next(labelled_batches(manifest, "test", PICTURE_IMAGES, limit=PICTURE_IMAGES))
    without = np.flatnonzero(~has[:, names.index(attribute)])
    return int(without[0]) if len(without) else 0


def _row(levels: np.ndarray, n_bins: int, path):
    """One row of frames, enlarged to at least GRID_MIN_PX wide."""
    from flows.viz import grid_shape, save_level_grid

    n, _, h, w = levels.shape
    scale = min(64, max(1, math.ceil(GRID_MIN_PX / max(grid_shape(n, (h, w), n)))))
    return save_level_grid(levels, n_bins, path, nrow=n, scale=scale)


def _log_pictures(ctx: StageContext, run_id: str | None, paths: list) -> None:
    """The pictures under `deploy/` in the registered version's (training) run."""
    from tracking import client as mlflow_client

    if run_id is None:
        return
    client = mlflow_client(ctx.tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), "deploy")


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
