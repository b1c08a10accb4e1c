"""A prepared dataset as an MLflow dataset input of a run (the run page's "Datasets")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracking.store import client

DIGEST_CHARS = 12  # MLflow keeps <= 36; the short id the registry and messages also show
CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag for what the run used the dataset for


def log_dataset_input(
    tracking_uri: str,
    run_id: str,
    *,
    name: str,
    fingerprint: str,
    manifest_location: str,
    image_shape: tuple[int, int, int],
    profile: Mapping[str, Any],
    context: str = "training",
) -> None:
    """Log the dataset as an input of the run, once (a resumed run already has it).

    digest: the first DIGEST_CHARS of the manifest's fingerprint (sha256 of manifest.json; the
    whole one is in the profile); source: the manifest file (a local path or a URL); schema:
    one uint8 image tensor [-1, C, H, W]; profile: `profile` (splits and counts, levels)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    mlflow = client(tracking_uri)
    digest = fingerprint[:DIGEST_CHARS]
    logged = mlflow.get_run(run_id).inputs.dataset_inputs or []
    if any(d.dataset.digest == digest and d.dataset.name == name for d in logged):
        return
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type=manifest_location.split("://")[0] if "://" in manifest_location else "local",
        source=json.dumps({"uri": _uri(manifest_location)}),
        schema=_image_schema(image_shape),
        profile=json.dumps({**profile, "fingerprint": fingerprint}),
    )
    mlflow.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(CONTEXT_TAG, context)])])


def _image_schema(image_shape: tuple[int, int, int]) -> str:
    """MLflow's tensor dataset schema of uint8 images [-1, C, H, W], as JSON."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    images = Schema([TensorSpec(np.dtype("uint8"), (-1, *image_shape), "image")])
    return json.dumps(TensorDatasetSchema(features=images).to_dict())


def _uri(location: str) -> str:
    """A URL as it is; a local path as a file:// URI."""
    return location if "://" in location else Path(location).resolve().as_uri()
