"""TrainConfig validation, run names, Ray Train wiring and MLflow dedup (no Ray run)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from train_helpers import tiny_train

from data_prep import Manifest
from tracking import MlflowTracker, reopen_or_create
from train.config import TrainConfig
from train.distributed import best_checkpoint, build_trainer, run_name, scaling_config
from train.hooks import FaultInjection
from train.loop import TrainJob, resolve_model_config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 63}, "63 / 2 = 31.5 images per worker is not whole"),
        ({"optim": {"betas": [0.9, 1.0]}}, "betas must lie in"),
        ({"optim": {"name": "sgd"}}, "'adam' or 'adamax'"),
        ({"sample_temperatures": [0.0]}, "sample_temperatures must be > 0"),
        ({"epochs": 0}, "greater than 0"),
        ({"bogus": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_train_configs_say_what_is_wrong(overrides, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig.model_validate(tiny_train(**overrides))


def test_fault_injection_hooks_check_their_settings():
    from train.ddp import WorkerInfo

    with pytest.raises(ValueError, match="fail_rank=2"):
        FaultInjection(fail_at_steps=(3,), fail_rank=2).before_step(1, WorkerInfo(0, 2), None)
    with pytest.raises(ValueError, match="count from 1"):
        FaultInjection(nan_at_steps=(0,))


def test_every_field_is_described():
    def undescribed(model) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                if annotation.__module__ == TrainConfig.__module__:
                    missing += undescribed(annotation)
        return missing

    assert undescribed(TrainConfig) == []


def test_model_config_is_filled_from_the_manifest(digits_manifest):
    manifest = Manifest.load(digits_manifest)
    cfg = TrainConfig.model_validate(tiny_train("glow", amp=True))

    model_cfg = resolve_model_config(cfg, manifest)

    assert model_cfg.image_shape == (1, 8, 8) and model_cfg.n_bins == 17
    assert model_cfg.net_dtype == "bfloat16"  # amp: coupling nets only
    assert cfg.model.image_shape is None  # the validated config itself is untouched


def test_run_name_is_deterministic_per_config_and_dataset():
    cfg = TrainConfig.model_validate(tiny_train())
    name = run_name("demo", cfg, "f" * 64)

    assert name == run_name("demo", TrainConfig.model_validate(tiny_train()), "f" * 64)
    assert name.startswith("demo-train-")
    assert name != run_name("demo", cfg.model_copy(update={"epochs": 3}), "f" * 64)
    assert name != run_name("demo", cfg, "e" * 64)


def test_trainer_wiring_follows_the_config(tmp_path):
    cfg = TrainConfig.model_validate(
        tiny_train(scaling={"num_workers": 2, "cpus_per_worker": 2}, checkpoints_keep=3,
                   max_failures=4, collective_timeout_s=30)
    )
    trainer = build_trainer(cfg, TrainJob("m.json"), tmp_path, "run-x")
    run = trainer.run_config

    assert (run.name, run.storage_path) == ("run-x", str(tmp_path))
    assert run.failure_config.max_failures == 4
    ckpt = run.checkpoint_config
    assert (ckpt.num_to_keep, ckpt.checkpoint_score_attribute) == (3, "val_bpd")
    assert ckpt.checkpoint_score_order == "min"
    scaling = trainer.scaling_config
    assert scaling.num_workers == 2 and scaling.resources_per_worker == {"CPU": 2}
    assert trainer.backend_config.backend == "gloo" and trainer.backend_config.timeout_s == 30
    gpu = scaling_config(cfg.scaling.model_copy(update={"use_gpu": True}))
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 2, "GPU": 1.0}


def test_the_best_checkpoint_is_the_lowest_val_bpd_never_the_lowest_test_bpd():
    from types import SimpleNamespace

    local = SimpleNamespace(type_name="local")
    kept = {"/ck/1": {"epoch": 1, "val_bpd": 3.0},
            "/ck/2": {"epoch": 2, "val_bpd": 2.5, "test_bpd": 9.0},
            "/ck/3": {"epoch": 3, "val_bpd": float("nan")},  # a non-finite score is no candidate
            "/ck/4": {"epoch": 4, "val_bpd": 2.8, "test_bpd": 1.0}}  # best on test: not chosen
    result = SimpleNamespace(path="/ck", best_checkpoints=[
        (SimpleNamespace(filesystem=local, path=path), metrics) for path, metrics in kept.items()])
    assert best_checkpoint(result) == ("/ck/2", kept["/ck/2"])
    only_test = SimpleNamespace(path="/ck", best_checkpoints=[
        (SimpleNamespace(filesystem=local, path="/ck/5"), {"epoch": 5, "test_bpd": 1.0})])
    with pytest.raises(RuntimeError, match="no checkpoint with a finite val_bpd"):
        best_checkpoint(only_test)


def test_reopened_run_logs_each_metric_step_once(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("train-test")
    def open_run(name, params, tags):
        return reopen_or_create(mlflow_uri, experiment, {"nfpipe.train_run": name}, name,
                                params, tags)

    run_id = open_run("run-a", {"lr": 0.001}, {"dataset": "digits"})
    first = MlflowTracker(mlflow_uri, run_id)
    for step in (1, 2, 3):
        first.add({"train_bpd": 5.0 - step}, step)
    first.flush()

    # a restarted worker replays epochs 2..4 into the reopened run
    assert open_run("run-a", {"lr": 0.001}, {}) == run_id
    second = MlflowTracker(mlflow_uri, run_id)
    for step in (2, 3, 4):
        second.add({"train_bpd": 5.0 - step, "test_bpd": 1.0}, step)
    second.flush()

    history = client.get_metric_history(run_id, "train_bpd")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "test_bpd")] == [2, 3, 4]
    assert client.get_run(run_id).data.params == {"lr": "0.001"}
