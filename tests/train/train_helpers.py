"""Shared by the train tests: tiny model configs, a quick `train:` section, and an in-process
`fit` for tests of the train stage without Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import logged_images

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
    """A `train:` section for a quick run (global batch 64: 19 steps per epoch on digits)."""
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


def progress_epochs(out: dict) -> list[int]:
    """The epochs rank 0 trained in the train stage's run `out`, from its progress lines."""
    lines = (Path(out["ray_run"]) / "progress.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def check_stage_run(out: dict, client, family: str, manifest_path: Path):
    """What the train stage leaves of a 2-epoch `tiny_train` run: its outputs, the exported
    bundle, and its MLflow run (status, tags, dataset input, params, metric steps, sample
    images, bundle artifact). Returns the MLflow run."""
    from flows.io import load_model

    # outputs later stages read; the bundle rebuilds from its own files
    assert {"model_dir", "checkpoint", "run_id", "val_bpd"} <= set(out)
    assert "test_bpd" not in out  # the test split is scored once, by the evaluate stage
    model = load_model(out["model_dir"])
    meta = json.loads((Path(out["model_dir"]) / "meta.json").read_text())
    manifest = json.loads(Path(manifest_path).read_text())
    assert model.image_shape == tuple(manifest["image_shape"])
    assert meta["dataset"] == "digits" and meta["run_id"] == out["run_id"]
    assert meta["epoch"] == out["best_epoch"] and meta["val_bpd"] == pytest.approx(out["val_bpd"])
    assert len(meta["manifest_fingerprint"]) == 64

    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["nfpipe.manifest_fingerprint"] == meta["manifest_fingerprint"]
    assert run.data.tags["nfpipe.stage"] == "train" and "mlflow.user" in run.data.tags
    (dataset,) = run.inputs.dataset_inputs  # the manifest as the run's dataset input
    assert meta["manifest_fingerprint"].startswith(dataset.dataset.digest)
    assert run.data.params["train.model.name"] == family
    assert run.data.params["train.model.n_bins"] == "17"
    # val bpd improves over epoch 0 (the initialised model), once per epoch; no test curve
    val_bpd = client.get_metric_history(out["run_id"], "bpd/val")
    assert [m.step for m in val_bpd] == [0, 1, 2]
    assert val_bpd[-1].value < val_bpd[0].value
    assert client.get_metric_history(out["run_id"], "bpd/test") == []
    for key in ("bpd/train", "epoch/images_per_s", "epoch/lr", "epoch/grad_norm",
                "epoch/skipped_steps"):
        assert _steps(client, out["run_id"], key) == [1, 2], key
    assert _steps(client, out["run_id"], "step/train_bpd") == list(range(5, 2 * 19 + 1, 5))

    images = logged_images(client, out["run_id"])  # one key per temperature, step = epoch
    assert images == {("samples/T0.7", 1), ("samples/T1", 1), ("samples/T0.7", 2),
                      ("samples/T1", 2)}
    bundle = {Path(a.path).name for a in client.list_artifacts(out["run_id"], "model_bundle")}
    assert {"model.safetensors", "model_config.json", "meta.json"} <= bundle

    # the importance-weighted bound (train.eval_k = 4 draws) is tighter than k = 1
    assert out["val_bpd_k4"] <= out["val_bpd"] + 1e-6
    return run


def check_forced_run(first: dict, forced: dict, client) -> None:
    """`--force` after a finished run trained afresh in a new Ray run and a new MLflow run,
    and kept the old ones."""
    assert forced["ray_run"] != first["ray_run"] and forced["run_id"] != first["run_id"]
    assert progress_epochs(forced) == [0, 1]  # trained from scratch: epoch 0 is the initial model
    assert Path(first["ray_run"]).is_dir() and progress_epochs(first) == [0, 1]  # old run kept
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert client.get_run(forced["run_id"]).info.status == "FINISHED"


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]
