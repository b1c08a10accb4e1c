"""Search spaces: parsing, and every bad space refused before any trial (no Ray needed)."""

from __future__ import annotations

import pytest
from rich.console import Console
from tune_helpers import pipeline_dict, write_pipeline

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, validate
from pipeline.stages.tune import sweep_spec
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.space import (
    SearchSpaceError,
    count_parameters,
    model_corners,
    to_tune_space,
    trial_train_config,
    validate_space,
)
from tune.sweep import plan_concurrency, run_sweep

DIGITS = (1, 8, 8)


def tune_cfg(space: dict, **extra) -> TuneConfig:
    return TuneConfig.model_validate({"space": space, **extra})


def test_space_forms_flatten_to_dotted_paths():
    cfg = tune_cfg({
        "model": {"levels": [1, 2], "coupling": {"choice": ["affine", "additive"]}},
        "optim.lr": {"loguniform": [1e-4, 1e-2]},
        "model.hidden": {"randint": [8, 16]},
    })
    assert set(cfg.space) == {"model.levels", "model.coupling", "optim.lr", "model.hidden"}
    assert cfg.space["model.levels"].choice == (1, 2)
    space = to_tune_space(cfg.space)
    assert space["model.hidden"].upper == 17  # randint is inclusive of hi
    # --set nests dotted keys; it overrides a flat YAML key and `null` removes one.
    raw = {"tune": {"space": {"model.levels": [1], "optim.lr": [1e-3]}}}
    loaded = validate({**raw}).tune
    assert loaded.space["model.levels"].choice == (1,)
    cfg = load_config(None, None, ["tune.space.model.levels=[1,2]", "tune.space.optim.lr=null"])
    assert cfg.tune.space["model.levels"].choice == (1, 2)
    assert "optim.lr" not in cfg.tune.space


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"model.levelz": [1, 2]}, ["model.levelz", "did you mean 'model.levels'"]),
        ({"optim": {"lrr": [1e-3]}}, ["optim.lrr", "did you mean 'optim.lr'"]),
        ({"model.coupling": []}, ["model.coupling", "empty choice"]),
        ({"optim.lr": {"loguniform": [1e-2, 1e-4]}}, ["optim.lr", "0 < lo < hi"]),
        ({"model.levels": {"choice": [1], "randint": [1, 2]}}, ["model.levels", "exactly one"]),
        ({"epochs": [1, 2]}, ["epochs", "tune.max_t"]),
        ({"model": [1, 2]}, ["'model' is a section"]),
    ],
)
def test_schema_errors_name_the_parameter(space, expected):
    sets = [f"tune.space={space}"]
    with pytest.raises(ConfigError) as err:
        load_config(None, None, sets)
    for text in expected:
        assert text in str(err.value)


def test_values_and_models_checked_against_train_and_image():
    base = TrainConfig.model_validate({"model": {"name": "glow", "hidden": 8}})
    with pytest.raises(SearchSpaceError, match=r"model\.levels=4.*8x8"):
        validate_space(tune_cfg({"model.levels": [1, 4]}), base, DIGITS, 17)
    with pytest.raises(SearchSpaceError, match=r"tune\.space\.model\.coupling.*'bogus'"):
        validate_space(tune_cfg({"model.coupling": ["affine", "bogus"]}), base, DIGITS, 17)
    with pytest.raises(SearchSpaceError, match=r"model\.steps.*integer"):
        validate_space(tune_cfg({"model.steps": {"uniform": [1, 3]}}), base, DIGITS, 17)
    with pytest.raises(SearchSpaceError, match=r"batch_size=64.*tune.workers_per_trial=3"):
        validate_space(tune_cfg({"optim.lr": [1e-3]}, workers_per_trial=3), base, DIGITS, 17)
    # realnvp halves one time fewer than glow but must keep more than 1x1 at its last scale
    with pytest.raises(SearchSpaceError, match=r"model\.name='realnvp', model\.levels=4"):
        space = {"model.name": ["realnvp"], "model.levels": [1, 4]}
        validate_space(tune_cfg(space), base, DIGITS, 17)
    validate_space(tune_cfg({"model.levels": [1, 3], "optim.lr": [1e-3]}), base, DIGITS, 17)


def test_corners_cover_every_model_combination():
    cfg = tune_cfg({"model.levels": [1, 2], "model.coupling": ["affine", "additive"],
                    "model.hidden": {"randint": [8, 64]}, "optim.lr": [1e-3]})
    corners = model_corners(cfg)
    assert len(corners) == 4 and all(c["model.hidden"] == 8 for c in corners)


def test_coupling_and_depth_change_the_built_model():
    base = TrainConfig.model_validate({"model": {"name": "glow", "hidden": 8}})
    cfg = tune_cfg({"model.levels": [1, 2]})
    counts = {}
    for levels in (1, 2):
        for steps in (1, 2):
            for coupling in ("affine", "additive"):
                overrides = {"model.levels": levels, "model.steps": steps,
                             "model.coupling": coupling}
                train = trial_train_config(base, overrides, cfg)
                counts[(levels, steps, coupling)] = count_parameters(train, DIGITS, 17)
    assert len(set(counts.values())) == len(counts), counts
    assert counts[(1, 1, "affine")] > counts[(1, 1, "additive")]  # scale needs 2x outputs
    assert counts[(2, 2, "affine")] > counts[(1, 1, "affine")]


def test_trial_config_shares_the_sweep_settings():
    base = TrainConfig.model_validate({"epochs": 9, "eval_every": 3})
    cfg = tune_cfg({"optim.lr": [1e-3]}, max_t=5)
    train = trial_train_config(base, {"optim.lr": 3e-3}, cfg)
    assert (train.epochs, train.eval_every, train.scaling.num_workers) == (5, 1, 1)
    assert train.optim.lr == 3e-3 and not train.eval_at_start


def test_a_trial_whose_workers_do_not_divide_the_global_batch_is_refused_naming_both():
    base = TrainConfig.model_validate({"batch_size": 64, "scaling": {"num_workers": 2}})
    with pytest.raises(SearchSpaceError, match=r"tune: a trial cannot split its batch: "
                       r"train.batch_size=64 is the global batch, split over "
                       r"tune.workers_per_trial=3 workers: 64 / 3 = 21.33 images per worker"):
        validate_space(tune_cfg({"optim.lr": [1e-3]}, workers_per_trial=3), base)
    validate_space(tune_cfg({"optim.lr": [1e-3]}, workers_per_trial=4), base)  # 16 each


def test_cpu_budget_of_trainer_trials_is_checked():
    base = TrainConfig.model_validate({"scaling": {"num_workers": 2, "cpus_per_worker": 1}})
    cfg = tune_cfg({"optim.lr": [1e-3]}, workers_per_trial=2, max_concurrent_trials=2)
    with pytest.raises(SearchSpaceError, match="deadlock"):
        plan_concurrency(cfg, base, cluster_cpus=4)  # 2 x (1 + 2) = 6 > 4
    assert plan_concurrency(cfg.model_copy(update={"max_concurrent_trials": 1}), base, 4) == 1
    with pytest.raises(SearchSpaceError, match="no trial fits"):
        plan_concurrency(cfg, base, cluster_cpus=2)
    single = tune_cfg({"optim.lr": [1e-3]}, num_samples=8)
    assert plan_concurrency(single, base, cluster_cpus=2) == 2


def test_bad_space_fails_before_any_trial_or_run(tmp_path, shards_root, manifest_path):
    raw = pipeline_dict(tmp_path, shards_root, {"space": {"model.levels": [2, 5]}})
    cfg = validate(raw)
    with pytest.raises(SearchSpaceError, match=r"model\.levels=5"):
        run_sweep(sweep_spec(cfg, manifest_path, tmp_path / "out", "bad"), Console(quiet=True))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was even opened
    # The CLI refuses schema errors with exit code 2, before data_prep or Ray.
    path = write_pipeline(tmp_path / "cli", shards_root, {"space": {"model.stepz": [1]}})
    assert main(["tune", str(path)]) == 2
    assert not (tmp_path / "cli" / "work").exists()
