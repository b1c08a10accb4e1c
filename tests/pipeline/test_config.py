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
