"""What `nfpipe submit` sends, checked before anything reaches a cluster: durable locations
only, validated and quoted stages, forwarded variables whose values are never printed."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from helpers import REPO

from pipeline.cli import build_parser, main
from pipeline.cli.args import config_from_args
from pipeline.config import ConfigError, load_config
from pipeline.submit import RESOLVED_CONFIG_ENV, forwarded_env, job_payload, parse_stages

DURABLE = [
    "workdir=/srv/nfpipe/work",
    "data_prep.output_root=s3://team-bucket/nfpipe/shards",
    "train.storage_path=s3://team-bucket/nfpipe/runs",
    "mlflow.tracking_uri=http://mlflow.internal:5000",
]


def test_default_relative_locations_are_refused_naming_each_key():
    cfg = load_config(None)
    with pytest.raises(ConfigError) as err:
        job_payload(cfg, None)
    text = str(err.value)
    for key in ("workdir=.nfpipe", "data_prep.output_root=data/shards",
                "mlflow.tracking_uri=sqlite:///mlflow.db", "mlflow.artifact_root=mlartifacts"):
        assert key in text
    assert "Ray's temporary copy" in text and "s3://bucket" in text


def test_durable_config_travels_whole_in_the_environment():
    cfg = load_config(None, sets=DURABLE)
    entrypoint, env = job_payload(cfg, ["data_prep", "train"], {"AWS_ENDPOINT_URL": "http://x"})
    assert shlex.split(entrypoint)[-2:] == ["--stages", "data_prep,train"]
    shipped = json.loads(env["env_vars"][RESOLVED_CONFIG_ENV])
    assert shipped["train"]["storage_path"] == "s3://team-bucket/nfpipe/runs"
    assert shipped["ray"]["address"] == "auto"
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://x"


@pytest.mark.parametrize("text", ["train;touch marker", "train, tune;rm -rf x", "", " , "])
def test_stages_are_validated_before_submission(text):
    with pytest.raises(ConfigError, match="stage"):
        parse_stages(text)


def test_stages_with_spaces_are_normalised_and_quoted():
    stages = parse_stages("train, tune")
    entrypoint, _ = job_payload(load_config(None, sets=DURABLE), stages)
    assert shlex.split(entrypoint)[-1] == "train,tune"
    assert ";" not in entrypoint and "&" not in entrypoint


def test_forwarded_env_needs_the_variable_set():
    assert forwarded_env(["A"], {"A": "1", "B": "2"}) == {"A": "1"}
    with pytest.raises(ConfigError, match="--env B: not set"):
        forwarded_env(["B"], {})


def test_submit_refuses_before_contacting_any_cluster(capsys):
    code = main(["submit", "--address", "http://127.0.0.1:9", "--stages", "train;touch x"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown stage 'train;touch x'" in err
    code = main(["submit", "--address", "http://127.0.0.1:9", "--stages", "train"])
    assert code == 2 and "workdir=.nfpipe" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                                  "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN", "api_key",
                                  "GOOGLE_APPLICATION_CREDENTIALS"])
def test_secret_looking_names_are_not_forwarded(name):
    """Ray shows a job's runtime_env on its dashboard and in `ray job list`: no secret goes."""
    with pytest.raises(ConfigError) as err:
        forwarded_env([name], {name: "value-never-shown"})
    text = str(err.value)
    assert f"--env {name}: looks like a secret" in text and "value-never-shown" not in text
    assert "instance or pod identity" in text and "`ray start`" in text


def test_plain_names_are_still_forwarded():
    env = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-east-1"}
    assert forwarded_env(list(env), env) == env


def test_submit_refuses_a_secret_env_before_contacting_any_cluster(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "value-never-shown")
    sets = [arg for setting in DURABLE for arg in ("--set", setting)]
    code = main(["submit", "--address", "http://127.0.0.1:9", "--env",
                 "AWS_SECRET_ACCESS_KEY", *sets])
    err = capsys.readouterr().err
    assert code == 2 and "looks like a secret" in err and "value-never-shown" not in err


def test_credentials_in_a_url_are_not_submitted():
    """The resolved config travels in the job's (public) runtime_env."""
    cfg = load_config(None, sets=[*DURABLE[:3],
                                  "mlflow.tracking_uri=http://me:pw-never-shown@mlflow:5000"])
    with pytest.raises(ConfigError) as err:
        job_payload(cfg, None)
    text = str(err.value)
    assert "mlflow.tracking_uri=http://***@mlflow:5000" in text
    assert "pw-never-shown" not in text and "MLFLOW_TRACKING_PASSWORD" in text


def readme_cluster_block() -> str:
    """The bash block of README.md's "Running on a Ray cluster", continued lines joined."""
    section = (REPO / "README.md").read_text().split("## Running on a Ray cluster\n")[1]
    return re.search(r"```bash\n(.*?)```", section, re.S)[1].replace("\\\n", " ")


def test_readmes_cluster_block_starts_ray_from_the_venv_and_submits_durable_locations():
    """As written: the venv is activated before `ray start`, and its `submit` line passes every
    check `submit` makes before contacting the cluster (stages, locations, credentials)."""
    lines = readme_cluster_block().splitlines()
    activate = lines.index("source .venv/bin/activate")
    assert all(i > activate for i, line in enumerate(lines) if line.startswith("ray start"))
    (submit,) = [line for line in lines if line.startswith("nfpipe submit")]
    args = build_parser().parse_args(shlex.split(submit)[1:])
    _, env = job_payload(config_from_args(args), parse_stages(args.stages))
    shipped = json.loads(env["env_vars"][RESOLVED_CONFIG_ENV])
    assert shipped["workdir"] == "/srv/nfpipe/work"
    assert args.address == "http://HEAD:8265" and args.wait
