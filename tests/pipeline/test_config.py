"""Config loading: profiles, --set, and errors that name the path and suggest the right key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, validate

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_pipeline_yaml_and_every_profile_validate():
    path = REPO / "pipeline.yaml"
    profiles = yaml.safe_load(path.read_text()).get("profiles", {})
    assert {"cifar10", "celeba"} <= set(profiles)
    for name in [None, *profiles]:
        cfg = load_config(path, profile=name)
        assert cfg.profile == name


def test_profile_and_set_override_in_order(tmp_path):
    path = write(
        tmp_path,
        {"name": "base", "ray": {"num_cpus": 2}, "profiles": {"big": {"ray": {"num_cpus": 8}}}},
    )
    assert load_config(path).ray.num_cpus == 2
    assert load_config(path, profile="big").ray.num_cpus == 8
    cfg = load_config(path, profile="big", sets=["ray.num_cpus=3", "name=other"])
    assert (cfg.ray.num_cpus, cfg.name) == (3, "other")


def test_unknown_key_names_path_and_closest_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"mlflow": {"trackin_uri": "x"}}))
    assert "mlflow.trackin_uri: unknown key 'trackin_uri' (did you mean 'tracking_uri'?)" in str(
        err.value
    )


def test_unknown_top_level_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(None, sets=["trian.epochs=3"])


def test_wrong_type_names_path_and_expectation():
    with pytest.raises(ConfigError, match=r"ray\.num_cpus: Input should be a valid integer"):
        load_config(None, sets=["ray.num_cpus=lots"])
    with pytest.raises(ConfigError, match=r"ray\.num_cpus: Input should be greater than 0"):
        validate({"ray": {"num_cpus": 0}})


def test_unknown_profile_suggests(tmp_path):
    path = write(tmp_path, {"profiles": {"cifar10": {}}})
    with pytest.raises(ConfigError, match=r"unknown profile 'cifar' \(did you mean 'cifar10'\?\)"):
        load_config(path, profile="cifar")


def test_bad_set_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        load_config(None, sets=["train.epochs"])
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_show_round_trips(capsys):
    assert main(["config", "show", str(REPO / "pipeline.yaml"), "--set", "ray.num_cpus=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["ray"]["num_cpus"] == 3
    assert validate(shown) == load_config(REPO / "pipeline.yaml", sets=["ray.num_cpus=3"])


def test_cli_user_error_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "config", "show", "--set", "mlflow.experimnt=x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean 'experiment'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_config_reference_lists_every_section():
    from pipeline.config import PipelineConfig
    from pipeline.reference import config_reference

    text = config_reference(PipelineConfig)
    for key in ("`mlflow.tracking_uri`", "`data_prep.dataset`", "`train.model.name`"):
        assert key in text


def test_readme_reference_is_current():
    from pipeline.config import PipelineConfig
    from pipeline.reference import config_reference, with_reference

    readme = (REPO / "README.md").read_text()
    assert with_reference(readme, config_reference(PipelineConfig)) == readme, (
        "README's pipeline.yaml reference is stale: run "
        "`.venv/bin/nfpipe config reference --update README.md`"
    )


@pytest.mark.parametrize("name", ["../../x", "a'b", 'a"b', "a b", "a/b", "-lead", ".hidden",
                                  "a..b", "x" * 65, ""])
def test_name_outside_the_safe_set_exits_2_naming_it(name, capsys):
    """`name` names Ray run folders, MLflow runs and models: no path, quote or space."""
    assert main(["config", "show", "--set", f"name={name}"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "  name: " in err and "letters, digits" in err


def test_safe_names_pass():
    for name in ("quickstart", "cifar10-glow_v2.1", "A" * 64):
        assert load_config(None, sets=[f"name={name}"]).name == name


@pytest.mark.parametrize("profiles, key", [
    ("[big, small]", "profiles:"), ("{big: [1, 2]}", "profiles.big:"),
    ("{big: 3}", "profiles.big:"),
])
def test_a_profile_that_is_not_a_mapping_exits_2_naming_it(tmp_path, capsys, profiles, key):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"name: x\nprofiles: {profiles}\n")
    assert main(["config", "show", str(path), "--profile", "big"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and key in err and "expected a mapping" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("assignment, key", [
    ("evaluate.temperatures=[.nan]", "evaluate.temperatures.0"),
    ("evaluate.temperatures=[1.0, .inf]", "evaluate.temperatures.1"),
    ("deploy.temperature=.inf", "deploy.temperature"),
    ("deploy.temperature=inf", "deploy.temperature"),  # a string pydantic reads as a float
    ("promote.margin=.nan", "promote.margin"),
    ("train.sample_temperatures=[.inf]", "train.sample_temperatures.0"),
    ("train.optim.grad_clip=.inf", "train.optim.grad_clip"),
])
def test_non_finite_floats_exit_2_naming_the_key(assignment, key, capsys):
    assert main(["config", "show", "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and f"  {key}: " in err


def _plant(model, path: tuple[str, ...], value):
    """A copy of `model` with `value` at the field `path` (no validation: as if it got in)."""
    head, *rest = path
    inner = value if not rest else _plant(getattr(model, head), tuple(rest), value)
    return model.model_copy(update={head: inner})


def _float_fields(model, loc: tuple[str, ...] = ()):
    from pydantic import BaseModel

    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _float_fields(value, (*loc, name))
        elif field.annotation in (float, float | None):
            yield (*loc, name)


def test_every_float_of_every_section_is_checked_for_nan():
    """The check is generic: a NaN planted in any float field of any section is found."""
    from pipeline.config import PipelineConfig, non_finite_problems

    cfg = PipelineConfig()
    assert non_finite_problems(cfg) == []
    paths = list(_float_fields(cfg))
    assert {("promote", "margin"), ("train", "optim", "lr"), ("deploy", "temperature")} <= set(
        paths)
    for path in paths:
        assert non_finite_problems(_plant(cfg, path, float("nan"))) == [
            f"  {'.'.join(path)}: Input should be a finite number (got nan)"]


@pytest.mark.parametrize("key", ["name", "workdir", "mlflow.tracking_uri"])
def test_empty_places_exit_2_naming_the_key(key, tmp_path, monkeypatch, capsys):
    """`--set workdir=` would write records/ into the current directory."""
    monkeypatch.chdir(tmp_path)
    for value in ("", " "):
        assert main(["config", "show", "--set", f"{key}={value}"]) == 2
        assert f"  {key}: " in capsys.readouterr().err
    assert main(["run", "--set", f"{key}=", "--stages", "data_prep"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_later_layer_replaces_the_other_unit_and_one_layer_may_not_give_both(tmp_path):
    """A profile or --set giving one of a pair (steps or images) clears the other."""
    cfg = load_config(REPO / "pipeline.yaml", "cifar10", ["train.optim.warmup_steps=5"]).train
    assert (cfg.optim.warmup_steps, cfg.optim.warmup_images) == (5, None)
    cfg = load_config(REPO / "pipeline.yaml", None, ["train.optim.ema_decay=0.9"]).train
    assert (cfg.optim.ema_decay, cfg.optim.ema_images) == (0.9, None)
    with pytest.raises(ConfigError, match="not both"):
        load_config(REPO / "pipeline.yaml", "cifar10",
                    ["train.optim={warmup_steps: 5, warmup_images: 640}"])
    with pytest.raises(ConfigError, match=r"512 / 3 = 170.7 images per worker"):
        load_config(REPO / "pipeline.yaml", "cifar10", ["train.scaling.num_workers=3"])
    tune = load_config(REPO / "pipeline.yaml", "cifar10", ["tune.warmup_steps=50"]).tune
    assert (tune.warmup_steps, tune.warmup_images) == (50, None)
    # a profile in images over a base in steps
    path = write(tmp_path, {"train": {"optim": {"warmup_steps": 200, "ema_decay": 0.99}},
                            "profiles": {"big": {"train": {"optim": {"warmup_images": 6400,
                                                                     "ema_images": 6400}}}}})
    optim = load_config(path, "big").train.optim
    assert (optim.warmup_steps, optim.warmup_images, optim.ema_decay, optim.ema_images) == (
        None, 6400, None, 6400)
