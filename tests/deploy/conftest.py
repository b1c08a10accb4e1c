"""Fixtures of the deploy tests: real digits shards, a tiny real Glow bundle, real registries.

Everything expensive is made once per session (shards, bundle, one logged pyfunc model per
registry); servers are started once per module by the modules that need them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def manifest(tmp_path_factory):
    """The real digits shard set (8x8, 17 levels), written by data_prep."""
    from data_prep import DataPrepConfig, Manifest, prepare

    root = tmp_path_factory.mktemp("shards")
    return Manifest.load(prepare(DataPrepConfig(dataset="digits", output_root=root)))


@pytest.fixture(scope="session")
def test_images(manifest) -> np.ndarray:
    """The first 16 test images, uint8 levels [16, 1, 8, 8]."""
    from data_prep import make_loader

    x, _ = next(iter(make_loader(manifest, "test", 16, mode="eval")))
    return x.numpy()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, manifest):
    """A tiny Glow, ActNorm initialised from real training images, saved as a model bundle."""
    import torch

    from data_prep import make_loader
    from flows import ModelConfig, build_model, initialize_from_batch
    from flows.io import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(name="glow", image_shape=tuple(manifest.image_shape),
                      n_bins=manifest.n_bins, levels=2, steps=1, hidden=8)
    model = build_model(cfg)
    x, _ = next(iter(make_loader(manifest, "train", 64, mode="eval")))
    initialize_from_batch(model, x)
    directory = tmp_path_factory.mktemp("bundle")
    save_model(model.eval(), directory, {"dataset": manifest.dataset, "run_id": "none",
                                         "manifest_fingerprint": manifest.fingerprint,
                                         "test_bpd": 9.9, "epoch": 0})
    return directory


@pytest.fixture(scope="session")
def model(bundle):
    """The bundle loaded in memory (the reference every served number is compared with)."""
    from flows.io import load_model

    return load_model(bundle)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """(tracking URI, experiment id) of a session-wide SQLite registry; tests use own names."""
    from deploy_helpers import make_registry

    return make_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def logged(registry, bundle):
    """The bundle logged once as a pyfunc model in a run: (run_id, ModelInfo)."""
    import mlflow
    from deploy_helpers import new_run, use_tracking

    from deploy.pyfunc import Limits, log_bundle

    uri, experiment = registry
    use_tracking(uri)
    run_id = new_run(uri, experiment)
    with mlflow.start_run(run_id=run_id):
        info = log_bundle(bundle, Limits(max_batch=64, max_samples=8))
    return run_id, info


@pytest.fixture(scope="session")
def champion(registry, logged, bundle):
    """The logged bundle registered as MODEL_NAME and promoted to champion."""
    from deploy_helpers import MODEL_NAME

    import tracking
    from deploy import registry as reg
    from deploy.pyfunc import bundle_sha256

    # a session fixture is set up before the autouse `_session_tracking`: an earlier test's
    # store may still be MLflow's global one, which resolves the `models:/` URI below
    tracking.use_store(registry[0])
    client = tracking.client(registry[0])
    run_id, info = logged
    candidate = reg.Candidate(3.0, 3.0, "digits", "fp", run_id, "glow",
                              bundle_sha256=bundle_sha256(bundle))
    version = reg.register_version(client, MODEL_NAME, info.model_uri, candidate, info.model_id)
    assert reg.promote(client, MODEL_NAME, version.version).promoted
    return version


@pytest.fixture(autouse=True)
def _session_tracking(registry):
    """Every test starts pointed at the session registry (CLI calls and the remote test move
    MLflow's process-wide tracking URI)."""
    from deploy_helpers import use_tracking

    use_tracking(registry[0])
    yield
    use_tracking(registry[0])


@pytest.fixture(scope="session")
def directed(registry, bundle, manifest, model, tmp_path_factory):
    """(the bundle with attributes.safetensors, as the evaluate stage writes it: the digit
    classes one-vs-rest over the train split), registered as DIRECTED through the real
    promote path and made champion."""
    import shutil

    from deploy_helpers import DIRECTED, new_run

    from data_prep.labels import attribute_names, labelled_batches
    from deploy.config import PromoteConfig
    from deploy.pyfunc import BUNDLE_FILES
    from deploy.registry import Candidate, register_and_promote
    from flows.attributes import DIRECTIONS_FILE, compute_directions, save_directions

    folder = tmp_path_factory.mktemp("directed")
    for name in BUNDLE_FILES:
        shutil.copy2(bundle / name, folder / name)
    directions = compute_directions(model, labelled_batches(manifest, "train", 256),
                                    attribute_names(manifest))
    save_directions(directions, folder / DIRECTIONS_FILE)
    candidate = Candidate(3.0, 3.0, "digits", manifest.fingerprint,
                          new_run(*registry), "glow")
    decision, _ = register_and_promote(registry[0], DIRECTED, folder, candidate,
                                       PromoteConfig(max_batch=64, max_samples=8))
    assert decision.promoted
    return folder
