"""evaluate stage: the chosen model's test bits/dim, scored once, logged to its run.

The model is chosen on the val split (`pick_model`: the trained model, or the best tuned one
when its val bpd is lower), never on test. The stage then runs the training loop's own
evaluation (`train.evaluation.evaluate`, one process) under the fixed seed `evaluate.seed`,
so the numbers are reproducible on any device: `val_bpd` over the whole val split (what
promotion compares with the champion), and over the whole test split `test_bpd` with one draw
per image (the usual bound; the ELBO for VAE / f-VAE: the figure the registry and README
report) and the importance-weighted bound over `evaluate.k` draws beside it as
`test_bpd_k{k}`. One sample grid per temperature (`train.evaluation.save_samples`).

Then, unless `evaluate.directions` is off, the attribute directions (`flows.attributes`,
Glow Fig. 6) from the train split's labels (CelebA's 40 attributes, or the classes
one-vs-rest: `data_prep.labels`), over at most `evaluate.direction_images` images: written
as `attributes.safetensors` into a copy of the chosen bundle in this stage's folder (the
train or tune stage's output is left as it is), which is the `model_dir` promote registers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.stages.base import StageContext, StageOutputs


def run(ctx: StageContext) -> StageOutputs:
    from data_prep import Manifest
    from flows.io import load_model
    from train.ddp import WorkerInfo
    from train.evaluation import evaluate, save_samples

    cfg = ctx.config.evaluate
    source = pick_model(ctx.inputs)
    manifest = Manifest.load(ctx.inputs["data_prep"]["manifest"])
    manifest.require_split("val")
    device = _device(cfg.device)
    model = load_model(source["model_dir"], map_location=device).eval()
    check_compatible(model, manifest)
    k = cfg.k
    ctx.console.print(f"    scoring {manifest.split('test').count} test images of "
                      f"{manifest.dataset} with the {source['stage']} model (k=1 and k={k})")
    one_process = WorkerInfo(device=device)
    val_bpd = evaluate(model, manifest, one_process, batch_size=cfg.batch_size, seed=cfg.seed,
                       split="val").bpd
    scored = evaluate(model, manifest, one_process, batch_size=cfg.batch_size, seed=cfg.seed)
    test_bpd, count = scored.bpd, scored.images
    # MLflow names beside the training curves (tracking.names): bpd first, then eval/
    metrics = {"bpd/test_eval": test_bpd, "bpd/val_eval": val_bpd, "eval/k": float(k),
               "eval/test_images": float(count)}
    outputs_k = {}
    if k > 1:
        outputs_k[f"test_bpd_k{k}"] = evaluate(model, manifest, one_process,
                                               batch_size=cfg.batch_size, seed=cfg.seed, k=k).bpd
        metrics[f"bpd/test_eval_k{k}"] = outputs_k[f"test_bpd_k{k}"]
    grids = save_samples(model, ctx.stage_dir, temperatures=cfg.temperatures,
                         n=cfg.grid_samples, seed=cfg.seed)
    report = {"source": source["stage"], "run_id": source["run_id"], "k": k, "seed": cfg.seed,
              "dataset": manifest.dataset, "manifest_fingerprint": manifest.fingerprint,
              "chosen_on_val_bpd": source["bpd"], **metrics}
    report_path = ctx.stage_dir / "evaluation.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log_to_run(ctx, source["run_id"], metrics, [report_path, *grids])
    at_k = "".join(f", {value:.4f} at k={k}" for value in outputs_k.values())
    chosen = "none" if source["bpd"] is None else f"{float(source['bpd']):.4f}"
    ctx.console.print(f"    test bpd {test_bpd:.4f}{at_k} over {count} images; val bpd "
                      f"{val_bpd:.4f} (chosen on val {chosen})")
    model_dir = add_directions(ctx, model, manifest, Path(source["model_dir"]))
    return {
        "model_dir": str(model_dir.resolve()),
        "run_id": source["run_id"],
        "test_bpd": test_bpd,
        **outputs_k,
        "val_bpd": val_bpd,
        "manifest_fingerprint": manifest.fingerprint,
        "manifest": manifest.location,
        "dataset": manifest.dataset,
        "family": model.config.name,
        "source": source["stage"],
        "k": k,
        "sample_grids": [str(p) for p in grids],
        "report": str(report_path),
    }


def add_directions(ctx: StageContext, model: Any, manifest: Any, bundle: Path) -> Path:
    """The bundle to register: a copy of `bundle` in this stage's folder with the attribute
    directions of the train split (module doc), or `bundle` itself when they are off or the
    shards carry no labels."""
    import shutil

    from data_prep.labels import attribute_names, labelled_batches
    from flows.attributes import DIRECTIONS_FILE, compute_directions, save_directions
    from flows.io import CONFIG, META, WEIGHTS

    cfg = ctx.config.evaluate
    names = attribute_names(manifest)
    if not cfg.directions or not names:
        why = "evaluate.directions is off" if names else "the shards carry no labels"
        ctx.console.print(f"    no attribute directions: {why}")
        return bundle
    limit = cfg.direction_images or None
    images = min(limit or manifest.split("train").count, manifest.split("train").count)
    ctx.console.print(f"    attribute directions of {len(names)} "
                      f"{'attributes' if manifest.attributes else 'classes (one-vs-rest)'} "
                      f"from {images} train images")
    directions = compute_directions(
        model, labelled_batches(manifest, "train", cfg.batch_size, limit), names)
    target = ctx.stage_dir / "model"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in (WEIGHTS, CONFIG, META):
        shutil.copy2(bundle / name, target / name)
    save_directions(directions, target / DIRECTIONS_FILE)
    skipped = sorted(set(names) - set(directions.names))
    note = f" ({', '.join(skipped)}: seen only one way, left out)" if skipped else ""
    ctx.console.print(f"    {len(directions.names)} directions -> {target / DIRECTIONS_FILE}"
                      f"{note}")
    return target


def pick_model(inputs: Any) -> dict[str, Any]:
    """The train stage's model, or the tune stage's best trial when it ran and has the lower
    val bpd (`bpd`: the val figure it was chosen on). A sweep that ranked its trials by
    another metric has no val figure to compare, so the trained model stays."""
    train = inputs["train"]
    chosen = {"stage": "train", "model_dir": train["model_dir"], "run_id": train["run_id"],
              "bpd": train.get("val_bpd")}
    tune = inputs.get("tune")
    if tune and tune.get("model_dir") and tune.get("metric") == "val_bpd":
        train_bpd = train.get("val_bpd")
        if train_bpd is None or float(tune["best_value"]) < float(train_bpd):
            chosen = {"stage": "tune", "model_dir": tune["model_dir"], "run_id": tune["run_id"],
                      "bpd": tune["best_value"]}
    return chosen


def check_compatible(model: Any, manifest: Any) -> None:
    """The model must have been built for the manifest's image shape and levels."""
    if tuple(model.config.image_shape) != tuple(manifest.image_shape) or (
            model.config.n_bins != manifest.n_bins):
        raise ValueError(
            f"model expects images {tuple(model.config.image_shape)} with "
            f"{model.config.n_bins} levels, but {manifest.path} holds "
            f"{tuple(manifest.image_shape)} with {manifest.n_bins}; retrain on this dataset"
        )


def log_to_run(ctx: StageContext, run_id: str, metrics: dict[str, float],
               files: list[Path]) -> None:
    """Metrics and files (under `evaluate/`) into the training run."""
    from tracking import client as mlflow_client

    ctx.experiment_id()
    client = mlflow_client(ctx.tracking_uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for path in files:
        client.log_artifact(run_id, str(path), "evaluate")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
