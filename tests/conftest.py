"""Shared fixtures: one real local Ray per test session, a SQLite-backed MLflow per test.

Tests that need a Ray cluster, a server process or a whole pipeline are marked `slow`
(explicitly, or by using the `ray_local` fixture); `make test-fast` leaves them out.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from helpers import S3_TEST_ENV, GcsServer, S3Server, free_port

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# Inductor compiles its C++ kernels in this process instead of a pool of compile workers: on
# a 2-core machine shared with the other test worker, starting and feeding the pool made one
# cold compile take 100 s instead of 20 s.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Point every S3 and GCS client of this session (Ray nodes and workers included, whenever
    they start) at the test's servers, as a user points them at MinIO or a GCS emulator; the
    servers themselves start only when a test asks for one (the `s3_server`, `gcs_server`
    fixtures)."""
    os.environ.update(S3_TEST_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                      STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}",
                      # the emulator has no storage-control (gRPC) API for gcsfs's bucket-type
                      # lookup, which would warn on every call
                      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
                      NO_GCE_CHECK="true")  # google-auth: no probe for a GCE metadata server
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                 "GOOGLE_APPLICATION_CREDENTIALS", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        os.environ.pop(name, None)  # never a real account from the developer's shell


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's Ray is slow, whatever its module says. Modules with slow
    tests run first, whole, in collection order, and the quick unit tests last: under
    pytest-xdist the quick ones then fill in while the other worker finishes a long test,
    instead of a long test starting last and running alone."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: modules stay whole


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray for the whole session (logical CPUs > physical so 2-worker runs fit)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A fresh SQLite-backed MLflow tracking store (and artifact folder) in a temp dir."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1 for the session."""
    server = S3Server(os.environ["AWS_ENDPOINT_URL"])
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket: `s3://NAME`."""
    return s3_server.create_bucket(f"nfpipe-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def gcs_server():
    """A real GCS JSON API server (gcp-storage-emulator, a process) on 127.0.0.1 for the
    session, reached through STORAGE_EMULATOR_HOST."""
    server = GcsServer(os.environ["STORAGE_EMULATOR_HOST"])
    yield server
    server.stop()


@pytest.fixture(params=["s3", "gs"])
def bucket(request) -> str:
    """A fresh, empty bucket on each object store in turn: `s3://NAME`, then `gs://NAME`."""
    server = request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[request.param])
    return server.create_bucket(f"nfpipe-{uuid.uuid4().hex[:12]}")
