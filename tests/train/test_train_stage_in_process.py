"""The train stage without Ray: its real loop fitted in this process (`in_process_fit`), a real
SQLite MLflow store, real shards and checkpoints. What the stage itself does is checked here:
the MLflow run it opens and finishes, the bundle it exports, `--force` and a finished run found
again. (The 2-rank DDP digest check stays with Ray: tests/train/test_train_stage.py.)"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, logged_images
from mlflow import MlflowClient
from train_helpers import TINY_MODELS, in_process_fit, no_cluster, tiny_train

from flows.io import load_model
from pipeline.stages import train as stage


def _run(ctx, fit=in_process_fit):
    return stage.run(ctx, fit=fit, cluster=no_cluster)


def _one_rank(family: str, **overrides) -> dict:
    return tiny_train(family, scaling={"num_workers": 1}, **overrides)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _epochs(out: dict) -> list[int]:
    """The epochs rank 0 trained in this run, from its progress lines."""
    lines = (Path(out["ray_run"]) / "progress.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


QUICK = ("nice", "vae")  # the others train ~10x slower here; their Ray runs train them too


@pytest.mark.parametrize("family", [f if f in QUICK else pytest.param(f, marks=pytest.mark.slow)
                                    for f in TINY_MODELS])
def test_stage_records_the_run_in_mlflow(family, make_ctx, mlflow_uri, digits_manifest):
    out = _run(make_ctx(_one_rank(family)))

    # outputs later stages read; the bundle rebuilds from its own files
    assert {"model_dir", "checkpoint", "run_id", "test_bpd"} <= set(out)
    model = load_model(out["model_dir"])
    meta = json.loads((Path(out["model_dir"]) / "meta.json").read_text())
    manifest = json.loads(Path(digits_manifest).read_text())
    assert model.image_shape == tuple(manifest["image_shape"])
    assert meta["dataset"] == "digits" and meta["run_id"] == out["run_id"]
    assert meta["epoch"] == out["best_epoch"] and meta["test_bpd"] == pytest.approx(out["test_bpd"])
    assert len(meta["manifest_fingerprint"]) == 64

    client = MlflowClient(mlflow_uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["nfpipe.manifest_fingerprint"] == meta["manifest_fingerprint"]
    assert tags["nfpipe.stage"] == "train" and "mlflow.user" in tags
    assert tags["nfpipe.dataset"] == "digits" and tags["nfpipe.model"] == family
    assert tags["nfpipe.train_run"] == meta["train_run"]
    (dataset,) = run.inputs.dataset_inputs  # the manifest as the run's dataset input
    assert meta["manifest_fingerprint"].startswith(dataset.dataset.digest)
    assert run.data.params["train.model.name"] == family
    assert run.data.params["train.model.n_bins"] == "17"  # resolved from the dataset
    assert run.data.params["data_prep.manifest"] == str(digits_manifest)
    # test bpd improves over epoch 0 (the initialised model), once per epoch
    test_bpd = client.get_metric_history(out["run_id"], "bpd/test")
    assert [m.step for m in test_bpd] == [0, 1, 2]
    assert test_bpd[-1].value < test_bpd[0].value
    for key in ("bpd/train", "epoch/images_per_s", "epoch/lr", "epoch/grad_norm",
                "epoch/skipped_steps"):
        assert _steps(client, out["run_id"], key) == [1, 2], key
    assert _steps(client, out["run_id"], "step/train_bpd") == list(range(5, 45, 5))
    assert len(tags["nfpipe.ddp.step1_digests"].split(",")) == 1  # one rank, one digest

    images = logged_images(client, out["run_id"])  # one key per temperature, step = epoch
    assert images == {("samples/T0.7", 1), ("samples/T1", 1), ("samples/T0.7", 2),
                      ("samples/T1", 2)}
    bundle = {Path(a.path).name for a in client.list_artifacts(out["run_id"], "model_bundle")}
    assert {"model.safetensors", "model_config.json", "meta.json"} <= bundle

    # the importance-weighted bound (train.eval_k = 4 draws) is tighter than k = 1
    assert out["test_bpd_k4"] <= out["test_bpd"] + 1e-6


def test_run_records_the_commit_of_the_code(make_ctx, mlflow_uri):
    """MLflow's git context finds no commit when the main script sits in a git-ignored folder
    (the `nfpipe` console script in .venv/bin, pytest here): the run still has the commit of
    the checkout holding the code, under MLflow's own tag."""
    out = _run(make_ctx(_one_rank("nice", epochs=1)))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    tags = MlflowClient(mlflow_uri).get_run(out["run_id"]).data.tags
    assert tags["mlflow.source.git.commit"] == head


def test_force_trains_a_new_run_and_keeps_the_old(make_ctx, mlflow_uri):
    """`--force` after a finished run trains afresh in a new run (a new MLflow run), keeping
    the old; without --force the finished (forced) run is found again and not fitted."""
    ctx = dataclasses.replace(make_ctx(_one_rank("nice", epochs=1)), fingerprint="fp")
    first = _run(ctx)
    forced = _run(dataclasses.replace(ctx, force=True))

    assert forced["ray_run"] != first["ray_run"] and forced["run_id"] != first["run_id"]
    assert _epochs(forced) == [0, 1]  # trained from scratch: epoch 0 is the initial model
    assert Path(first["ray_run"]).is_dir() and _epochs(first) == [0, 1]  # the old run kept
    client = MlflowClient(mlflow_uri)
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert client.get_run(forced["run_id"]).info.status == "FINISHED"

    again = _run(ctx, fit=_must_not_fit)  # no --force: the run of this config is found again
    assert again == forced
    assert _epochs(again) == [0, 1]
    assert client.get_run(forced["run_id"]).info.status == "FINISHED"


def test_an_unfinished_run_is_fitted_again(make_ctx, mlflow_uri):
    """A run whose MLflow run did not finish (here: reopened as a resume) is fitted, not
    skipped; it resumes from its last checkpoint, in the same MLflow run."""
    ctx = make_ctx(_one_rank("nice", epochs=1))
    first = _run(ctx)
    MlflowClient(mlflow_uri).update_run(first["run_id"], status="RUNNING")  # as if killed
    fits = []

    def counting_fit(*args):
        fits.append(args[3])
        return in_process_fit(*args)

    again = _run(ctx, fit=counting_fit)
    assert fits == [Path(first["ray_run"]).name] and again["run_id"] == first["run_id"]
    assert again["resumes"] == first["resumes"] + 1 and _epochs(again) == [0, 1]
    assert MlflowClient(mlflow_uri).get_run(first["run_id"]).info.status == "FINISHED"


def test_a_failed_fit_marks_the_run_failed(make_ctx, mlflow_uri):
    ctx = make_ctx(_one_rank("nice", epochs=1))

    def failing_fit(cfg, job, storage_path, name):
        raise RuntimeError("workers lost")

    with pytest.raises(RuntimeError, match="workers lost"):
        _run(ctx, fit=failing_fit)
    (run,) = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("nfpipe").experiment_id])
    assert run.info.status == "FAILED"
    assert not (ctx.stage_dir / stage.FINISHED_FILE).exists()


def _must_not_fit(cfg, job, storage_path, name):
    raise AssertionError(f"fit called for {name}, which has finished")
