"""evaluate -> promote -> deploy stages on a real model bundle, real shards and real MLflow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import new_run
from PIL import Image
from pydantic import ValidationError
from rich.console import Console

from deploy.config import DeployConfig, PromoteConfig
from pipeline.config import validate
from pipeline.stages import deploy as deploy_stage
from pipeline.stages import evaluate, promote
from pipeline.stages.base import StageContext
from train.ddp import WorkerInfo
from train.evaluate_config import EvaluateConfig
from train.evaluation import evaluate as evaluate_split


@pytest.fixture(scope="module")
def pipeline_cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    return validate({
        "name": "digits",
        "workdir": str(tmp / "work"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "stages",
                   "artifact_root": str(tmp / "artifacts")},
        "evaluate": {"batch_size": 100, "k": 2, "grid_samples": 4, "temperatures": [1.0, 0.5]},
        "promote": {"margin": 0.01, "max_samples": 8, "max_batch": 64},
        "deploy": {"smoke_samples": 4, "smoke_images": 10},
    })


@pytest.fixture(scope="module")
def train_run(pipeline_cfg) -> str:
    from tracking import ensure_experiment

    mlflow = pipeline_cfg.mlflow
    experiment = ensure_experiment(mlflow.tracking_uri, mlflow.experiment, mlflow.artifact_root)
    return new_run(pipeline_cfg.mlflow.tracking_uri, experiment)


def mlflow_client(cfg):
    import tracking

    return tracking.client(cfg.mlflow.tracking_uri)  # its registry too, not MLflow's global one


def _ctx(cfg, stage: str, inputs: dict, console: Console | None = None) -> StageContext:
    stage_dir = Path(cfg.workdir) / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(cfg, stage_dir, inputs, console or Console(quiet=True))


@pytest.fixture(scope="module")
def evaluated(pipeline_cfg, train_run, bundle, manifest):
    inputs = {"data_prep": {"manifest": str(manifest.path),
                            "manifest_fingerprint": manifest.fingerprint},
              "train": {"model_dir": str(bundle), "run_id": train_run, "val_bpd": 9.9}}
    return evaluate.run(_ctx(pipeline_cfg, "evaluate", inputs)), inputs


def test_evaluate_scores_the_whole_test_split_and_logs_to_the_run(evaluated, pipeline_cfg,
                                                                  model, manifest, train_run):
    import mlflow
    import torch

    from data_prep import make_loader

    out, inputs = evaluated
    assert out["run_id"] == train_run and out["manifest_fingerprint"] == manifest.fingerprint
    assert out["source"] == "train" and out["k"] == 2 and out["family"] == "glow"
    # an independent pass over every test image (other batching, other noise): same bound
    x = torch.cat([x for x, _ in make_loader(manifest, "test", 512, mode="eval")])
    assert len(x) == manifest.split("test").count
    with torch.no_grad():
        reference = float(model.bits_per_dim(x, generator=torch.Generator().manual_seed(1))
                          .double().mean())
    assert out["test_bpd"] == pytest.approx(reference, abs=0.02)
    # the stage runs the training loop's own evaluation: called directly, the same numbers
    direct = {k: evaluate_split(model, manifest, WorkerInfo(), batch_size=100,
                                seed=pipeline_cfg.evaluate.seed, k=k).bpd for k in (1, 2)}
    assert out["test_bpd"] == direct[1] and out["test_bpd_k2"] == direct[2]
    # and the val bpd promotion compares, on the whole val split
    assert out["val_bpd"] == evaluate_split(model, manifest, WorkerInfo(), batch_size=100,
                                            seed=pipeline_cfg.evaluate.seed, split="val").bpd
    assert out["val_bpd"] != out["test_bpd"]
    # fixed seed: a second evaluation gives the identical number
    console = Console(record=True, width=300, file=io.StringIO())
    again = evaluate.run(_ctx(pipeline_cfg, "evaluate-again", inputs, console))
    assert again["test_bpd"] == out["test_bpd"]
    printed = console.export_text()
    assert "(chosen on val 9.9000)" in printed  # 4 decimals, as test bpd

    run = mlflow.MlflowClient(pipeline_cfg.mlflow.tracking_uri).get_run(train_run)
    assert run.data.metrics["bpd/test_eval"] == pytest.approx(out["test_bpd"])
    assert run.data.metrics["eval/test_images"] == manifest.split("test").count
    assert run.data.metrics["bpd/val_eval"] == pytest.approx(out["val_bpd"])
    logged = {Path(a.path).name for a in mlflow.MlflowClient(
        pipeline_cfg.mlflow.tracking_uri).list_artifacts(train_run, "evaluate")}
    assert logged == {"evaluation.json", "samples_T1.png", "samples_T0.5.png"}
    assert all(Path(p).exists() for p in out["sample_grids"])
    # the directions of the 10 digit classes from the train split, in a copy of the bundle
    from data_prep.labels import attribute_names, labelled_batches
    from flows.attributes import DIRECTIONS_FILE, compute_directions, load_directions

    folder = Path(out["model_dir"])
    assert folder == (Path(pipeline_cfg.workdir) / "evaluate" / "model").resolve()
    stored = load_directions(folder / DIRECTIONS_FILE)
    expected = compute_directions(model, labelled_batches(manifest, "train", 256),
                                  attribute_names(manifest))
    assert stored.names == [str(d) for d in range(10)] and stored.counts == expected.counts
    for name in stored.names:
        for latent, vector in expected.get(name).items():
            np.testing.assert_allclose(stored.get(name)[latent], vector, rtol=1e-5, atol=1e-6)
    train = manifest.split("train").count
    assert f"attribute directions of 10 classes (one-vs-rest) from {train} train images" in printed


def test_promote_then_deploy_pull_the_champion(evaluated, pipeline_cfg, train_run):
    out, _ = evaluated
    first = promote.run(_ctx(pipeline_cfg, "promote", {"evaluate": out}))
    assert first["model_name"] == "digits-glow" and first["promoted"]
    assert first["champion_version"] == first["version"] == "1"
    again = promote.run(_ctx(pipeline_cfg, "promote", {"evaluate": out}))  # a re-run
    assert again["version"] == "1" and again["champion_version"] == "1"  # no duplicate

    experiment = mlflow_client(pipeline_cfg).get_run(train_run).info.experiment_id
    other_run = new_run(pipeline_cfg.mlflow.tracking_uri, experiment)
    # within the margin on val, though far better on test: compared on val, it is kept
    worse = {**out, "val_bpd": out["val_bpd"] + 0.005, "test_bpd": out["test_bpd"] - 0.5,
             "run_id": other_run}
    second = promote.run(_ctx(pipeline_cfg, "promote", {"evaluate": worse}))
    assert second["version"] == "2"
    assert not second["promoted"] and second["champion_version"] == "1"
    assert "does not beat champion v1" in second["reason"]
    tags = mlflow_client(pipeline_cfg).get_model_version("digits-glow", "2").tags
    assert (float(tags["val_bpd"]), float(tags["test_bpd"])) == (worse["val_bpd"],
                                                                 worse["test_bpd"])

    deployed = deploy_stage.run(_ctx(pipeline_cfg, "deploy", {"promote": second}))
    assert deployed["model_uri"] == "models:/digits-glow@champion" and deployed["version"] == "1"
    with Image.open(deployed["sample_grid"]) as grid:  # scaled up like `deploy sample --scale`
        assert max(grid.size) >= deploy_stage.GRID_MIN_PX
    scores = json.loads(Path(deployed["scores"]).read_text())
    assert scores["count"] == 10 and np.isfinite(scores["bpd"]).all()
    # the champion came with its directions: the Fig. 5 strip and the Fig. 6 row, in MLflow
    for key, name, frames in (("interpolation", "interp.png", 10),
                              ("manipulation", "manipulate.png", len(deploy_stage.ALPHAS))):
        assert Path(deployed[key]).name == name
        with Image.open(deployed[key]) as picture:
            assert picture.width >= deploy_stage.GRID_MIN_PX > picture.height
            assert picture.width / picture.height == pytest.approx(frames, rel=0.15)
    logged = {Path(a.path).name for a in mlflow_client(pipeline_cfg).list_artifacts(
        train_run, "deploy")}
    assert logged == {"interp.png", "manipulate.png"}


def test_evaluate_prefers_the_tuned_model_with_the_lower_val_bpd():
    train = {"model_dir": "a", "run_id": "r1", "val_bpd": 3.0, "test_bpd": 9.0}
    tuned = {"model_dir": "b", "run_id": "r2", "metric": "val_bpd", "best_value": 2.9}
    assert evaluate.pick_model({"train": train, "tune": tuned})["model_dir"] == "b"
    assert evaluate.pick_model({"train": train, "tune": {**tuned, "best_value": 3.1}}
                               )["model_dir"] == "a"
    assert evaluate.pick_model({"train": train})["run_id"] == "r1"
    # a sweep ranked by train bpd has no val figure to compare: the trained model stays
    by_train = {**tuned, "metric": "train_bpd", "best_value": 0.1}
    assert evaluate.pick_model({"train": train, "tune": by_train})["model_dir"] == "a"


@pytest.mark.parametrize("model, raw", [
    (EvaluateConfig, {"temperatures": [0.0]}),
    (EvaluateConfig, {"k": 0}),
    (EvaluateConfig, {"device": "tpu"}),
    (EvaluateConfig, {"batchsize": 3}),
    (PromoteConfig, {"margin": -0.1}),
    (PromoteConfig, {"max_samples": 0}),
    (DeployConfig, {"port": 70000}),
    (DeployConfig, {"alias": ""}),
])
def test_configs_reject_bad_values(model, raw):
    with pytest.raises(ValidationError):
        model.model_validate(raw)


def test_configs_are_frozen_and_documented():
    for model in (EvaluateConfig, PromoteConfig, DeployConfig):
        assert all(field.description for field in model.model_fields.values()), model
        with pytest.raises(ValidationError):
            setattr(model(), next(iter(model.model_fields)), None)
    assert DeployConfig().host == "127.0.0.1"


def test_evaluate_reports_the_iwae_bound_for_a_vae(pipeline_cfg, train_run, manifest, tmp_path):
    import mlflow

    from flows import ModelConfig, build_model
    from flows.io import save_model

    vae = build_model(ModelConfig(name="vae", image_shape=(1, 8, 8), n_bins=17, levels=1,
                                  hidden=8, latent_dim=4, res_blocks=1))
    save_model(vae.eval(), tmp_path / "vae", {"dataset": "digits"})
    cfg = pipeline_cfg.model_copy(
        update={"evaluate": pipeline_cfg.evaluate.model_copy(update={"k": 8})})
    run_id = new_run(cfg.mlflow.tracking_uri,
                     mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(train_run)
                     .info.experiment_id)
    inputs = {"data_prep": {"manifest": str(manifest.path)},
              "train": {"model_dir": str(tmp_path / "vae"), "run_id": run_id, "val_bpd": 9.0}}
    out = evaluate.run(_ctx(cfg, "evaluate-vae", inputs))
    assert out["k"] == 8 and out["family"] == "vae"
    metrics = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(run_id).data.metrics
    assert metrics["bpd/test_eval"] == pytest.approx(out["test_bpd"])  # k = 1: the ELBO
    assert metrics["bpd/test_eval_k8"] == pytest.approx(out["test_bpd_k8"])
    assert out["test_bpd_k8"] <= out["test_bpd"] + 0.01  # IWAE: at least as tight
