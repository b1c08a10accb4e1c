"""A store that stops answering mid-run: data_prep fails in bounded time, naming the URL and
the operation, and a rerun resumes. moto's S3 server behind a stalling TCP proxy."""

from __future__ import annotations

import re
import time
import uuid

import fsspec
import pytest
from stalling_proxy import StallingProxy

from data_prep import DataPrepConfig, Manifest, prepare, storage
from data_prep.verify import check_shards

pytestmark = pytest.mark.slow  # a server thread, and seconds of waiting on the stalled store

FOLDER = "digits-8x8-5bit"
STALL_REPORTED_WITHIN_S = 60  # an upload of a small shard: deadline_s() is 45 s
TEST_TIMEOUT_S = 8.0  # the operation deadline in this test, so it waits 8 s, not 45 s


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """A stalling proxy in front of moto, reached through AWS_ENDPOINT_URL."""
    from s3fs import S3FileSystem

    proxy = StallingProxy(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    S3FileSystem.clear_instance_cache()  # a cached client would go to moto directly
    yield proxy
    proxy.close()
    S3FileSystem.clear_instance_cache()  # nor may a later test's go to the proxy


def _shards(s3_server, root: str) -> dict[str, object]:
    """Shard key -> LastModified, read from moto directly."""
    fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=s3_server.endpoint)
    found = fs.find(root.removeprefix("s3://"), detail=True)
    return {key: info["LastModified"] for key, info in found.items() if key.endswith(".tar")}


def test_a_small_shards_deadline_is_under_a_minute():
    """What users get: an upload of a digits-sized shard (a few hundred KB) that meets a
    stalled store is given up within a minute, retries included."""
    assert storage.deadline_s(2**20) < STALL_REPORTED_WITHIN_S


def test_stalled_store_fails_in_bounded_time_naming_url_and_operation_and_rerun_resumes(
        s3_server, proxy, digits_manifest, monkeypatch):
    bucket = s3_server.create_bucket(f"nfpipe-{uuid.uuid4().hex[:12]}")
    root = f"{bucket}/shards"
    stalled_at: list[float] = []

    def stall_after_two_train_shards(split: str, done: int, total: int) -> None:
        if split == "train" and done >= 256 and not stalled_at:
            proxy.stall()
            stalled_at.append(time.monotonic())

    with monkeypatch.context() as shorter, pytest.raises(storage.StorageError) as err:
        shorter.setattr(storage, "OPERATION_TIMEOUT_S", TEST_TIMEOUT_S)
        prepare(DataPrepConfig(output_root=root), progress=stall_after_two_train_shards)
    assert stalled_at, str(err.value)
    took = time.monotonic() - stalled_at[0]
    # the deadline (8 s plus 1 s per MiB moved), not botocore's 3 x 10 s, ended the upload
    assert took < TEST_TIMEOUT_S + 5, f"the stall was reported after {took:.0f}s"
    message = str(err.value)
    assert re.match(rf"{root}/{FOLDER}/train-\d{{5}}\.tar: upload\b", message), message
    assert f"endpoint {proxy.endpoint} from AWS_ENDPOINT_URL" in message

    written = _shards(s3_server, root)
    assert any(key.endswith("train-00001.tar") for key in written)  # it stopped mid-way
    time.sleep(1.1)  # LastModified has whole seconds
    proxy.resume()
    manifest = Manifest.load(prepare(DataPrepConfig(output_root=root)))
    assert manifest.fingerprint == Manifest.load(digits_manifest).fingerprint
    check_shards(manifest)
    after = _shards(s3_server, root)
    assert {key: after[key] for key in written} == written  # resumed: kept, not written again
    assert len(after) > len(written)
