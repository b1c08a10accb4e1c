"""`nfpipe run` with every location of its stages in a gs:// bucket on a real GCS server
(gcp-storage-emulator, reached through STORAGE_EMULATOR_HOST): the README's GCS command, on
digits with the tiny settings."""

from __future__ import annotations

import shutil
import uuid

import fsspec
import pytest
from e2e_helpers import nfpipe_run
from helpers import REPO

pytestmark = pytest.mark.slow  # a whole pipeline run with its own Ray


def test_data_prep_and_train_with_every_location_in_a_gcs_bucket(gcs_server, tmp_path):
    bucket = gcs_server.create_bucket(f"nfpipe-{uuid.uuid4().hex[:12]}")
    shutil.copy(REPO / "pipeline.yaml", tmp_path / "pipeline.yaml")
    proc = nfpipe_run(tmp_path, "--stages", "data_prep,train",
                      "--set", f"data_prep.output_root={bucket}/nfpipe/shards",
                      "--set", f"train.storage_path={bucket}/nfpipe/runs",
                      "--set", f"mlflow.artifact_root={bucket}/nfpipe/mlartifacts")
    assert proc.returncode == 0, proc.stderr[-3000:]

    keys = fsspec.filesystem("gs", skip_instance_cache=True).find(bucket.removeprefix("gs://"))
    keys = [key for key in keys if not key.endswith("/")]  # pyarrow's folder markers
    folders = {key.split("/")[2] for key in keys}
    assert folders == {"shards", "runs", "mlartifacts"}, folders
    assert any(key.endswith("/shards/digits-8x8-5bit/manifest.json") for key in keys)
    checkpoints = [key for key in keys if "/runs/" in key and "/checkpoint_" in key]
    assert checkpoints, keys  # Ray Train wrote its checkpoints through pyarrow to the bucket
    assert any("/artifacts/model_bundle/" in key for key in keys)  # MLflow's, to the bucket
    assert not (tmp_path / "data").exists()  # no shard on local disk
    assert not list(tmp_path.glob(".nfpipe/ray_results"))  # no Ray storage on local disk
