"""Locations in pipeline.yaml: a path or a URL, checked by scheme offline and by reachability
before any stage runs; a damaged shard set is rechecked and repaired by rerunning data_prep."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from helpers import REPO, VENV_BIN, subprocess_env
from rich.console import Console

from data_prep import Manifest
from pipeline.config import ConfigError, load_config
from pipeline.locations import check_locations, locations
from pipeline.runner import run_pipeline


@pytest.mark.parametrize("key", ["data_prep.output_root", "data_prep.source",
                                 "train.storage_path", "mlflow.artifact_root"])
def test_unknown_scheme_is_a_config_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=f"{key}: .*unknown storage scheme 'bogus'"):
        load_config(None, sets=[f"{key}=bogus://bucket/x"])


def test_credentials_in_a_url_are_refused_without_echoing_them():
    with pytest.raises(ConfigError) as err:
        load_config(None, sets=["train.storage_path=s3://AKIAX:topsecret@bucket/runs"])
    assert "train.storage_path" in str(err.value) and "may not hold credentials" in str(err.value)
    assert "topsecret" not in str(err.value)


def test_urls_are_kept_and_only_the_stages_locations_are_checked():
    cfg = load_config(None, sets=["train.storage_path=s3://b/runs",
                                  "data_prep.output_root=gs://b/shards"])
    assert cfg.train.storage_path == "s3://b/runs"
    assert locations(cfg, ["train"]) == {"train.storage_path": "s3://b/runs",
                                         "mlflow.artifact_root": "mlartifacts"}
    check_locations(load_config(None), ["data_prep", "train"])  # local paths: nothing to ask


@pytest.mark.slow
# S3 reports the refused connection; gcsfs retries it (~30 s), so GCS reports no answer
@pytest.mark.parametrize(("url", "variable", "says"), [
    ("s3://nfpipe-bucket/shards", "AWS_ENDPOINT_URL", "cannot reach"),
    ("gs://nfpipe-bucket/shards", "STORAGE_EMULATOR_HOST", "no answer from"),
])
def test_unreachable_endpoint_fails_in_seconds_naming_the_key(tmp_path, url, variable, says):
    start = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "nfpipe"), "run", "--stages", "train",
         "--set", f"workdir={tmp_path / 'work'}",
         "--set", f"data_prep.output_root={url}",
         "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=REPO, env=subprocess_env(**{variable: "http://127.0.0.1:9"}),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.search(f"config error: data_prep.output_root: {url}: (list: )?{says} the store "
                     f".*endpoint http://127.0.0.1:9 from {variable}",
                     " ".join(proc.stderr.split())), proc.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "work").exists()  # no stage started


@pytest.fixture
def prepared(tmp_path):
    """(config, console) after one data_prep run of the digits shards under tmp_path."""
    cfg = load_config(None, sets=[f"workdir={tmp_path / 'work'}",
                                  f"data_prep.output_root={tmp_path / 'shards'}"])
    console = Console(record=True, width=200)
    run_pipeline(cfg, ["data_prep"], console=console)
    return cfg, console


@pytest.mark.slow
def test_rerun_rechecks_the_shards_and_rewrites_the_damaged_one(tmp_path, prepared):
    cfg, console = prepared
    manifest = Manifest.load(tmp_path / "shards" / "digits-8x8-5bit")
    victim = manifest.root / "train-00002.tar"
    intact = manifest.root / "train-00003.tar"
    before = intact.stat().st_mtime_ns
    victim.write_bytes(victim.read_bytes()[:-700])  # truncated
    outcomes = run_pipeline(cfg, ["data_prep"], console=console)
    assert outcomes[0].status == "ran"
    assert f"{victim}: sha256 differs" in console.export_text()
    assert Manifest.load(manifest.path).fingerprint == manifest.fingerprint
    assert intact.stat().st_mtime_ns == before  # only the damaged shard was written again
    assert run_pipeline(cfg, ["data_prep"], console=console)[0].status == "skipped"


@pytest.mark.slow
def test_a_manifest_lying_about_a_count_is_noticed_and_rewritten(tmp_path, prepared):
    cfg, console = prepared
    path = tmp_path / "shards" / "digits-8x8-5bit" / "manifest.json"
    good = path.read_bytes()
    raw = json.loads(good)
    raw["splits"]["train"]["shards"][1]["count"] += 1
    path.write_text(json.dumps(raw))
    outcomes = run_pipeline(cfg, ["data_prep"], console=console)
    assert outcomes[0].status == "ran"
    assert "manifest.json changed since data_prep wrote it" in console.export_text()
    assert path.read_bytes() == good
    path.write_text(json.dumps(raw))
    assert run_pipeline(cfg, ["data_prep"], force=True, console=console)[0].status == "ran"
    assert path.read_bytes() == good


@pytest.mark.slow
def test_sqlite_store_with_an_artifact_root_in_a_bucket(bucket, tmp_path):
    import fsspec

    import tracking
    from data_prep import storage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "bucket-artifacts", f"{bucket}/mlartifacts")
    run = tracking.client(uri).create_run(experiment).info.run_id
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "meta.json").write_text("{}")
    tracking.log_artifacts(uri, run, tmp_path / "bundle", "model_bundle")
    fs = fsspec.filesystem(storage.scheme(bucket), skip_instance_cache=True)
    keys = fs.find(f"{bucket}/mlartifacts".split("://", 1)[1])
    assert any(key.endswith(f"{run}/artifacts/model_bundle/meta.json") for key in keys)
