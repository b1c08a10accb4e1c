"""data_prep and the loader on real object stores on 127.0.0.1, each test once per store: an
S3-compatible server (moto) reached through AWS_ENDPOINT_URL exactly as a user reaches MinIO,
and a GCS server (gcp-storage-emulator) reached through STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import fsspec
import pytest
from helpers import REPO, subprocess_env
from raw_builders import cifar_batches, write_celeba, write_cifar_archive

from data_prep import DataPrepConfig, DataPrepError, Manifest, make_loader, prepare, storage
from data_prep.verify import check_shards

pytestmark = pytest.mark.slow  # a server thread and many small requests

FOLDER = "digits-8x8-5bit"


def _fs(url: str):
    """A fresh fsspec file system of the URL's store (s3fs or gcsfs)."""
    return fsspec.filesystem(storage.scheme(url), skip_instance_cache=True)


def _key(url: str) -> str:
    return url.split("://", 1)[1]


def _modified(bucket: str) -> dict[str, object]:
    """Object key -> what a new write changes: S3's LastModified (whole seconds), GCS's
    generation, for every object under the bucket."""
    found = _fs(bucket).find(_key(bucket), detail=True)
    return {path: info.get("generation") or info["LastModified"] for path, info in found.items()}


def _batches(manifest, split="test"):
    return [(x.numpy().tobytes(), y.tolist())
            for x, y in make_loader(manifest, split, 64, mode="eval")]


def test_shards_in_a_bucket_match_local_and_stream_to_every_rank(bucket, digits_manifest):
    url = prepare(DataPrepConfig(output_root=f"{bucket}/shards"))
    assert url == f"{bucket}/shards/{FOLDER}/manifest.json"
    remote, local = Manifest.load(url), Manifest.load(digits_manifest)
    assert remote.fingerprint == local.fingerprint  # byte-identical manifest, same shards
    assert _batches(remote) == _batches(local)
    # the rank split over two ranks x two loader workers reads from the bucket as from disk
    for rank in (0, 1):
        a = make_loader(remote, "train", 32, rank=rank, world_size=2, num_workers=2, epoch=3)
        b = make_loader(local, "train", 32, rank=rank, world_size=2, num_workers=2, epoch=3)
        assert [x.sum().item() for x, _ in a] == [x.sum().item() for x, _ in b]


def test_second_run_writes_nothing(bucket):
    cfg = DataPrepConfig(output_root=f"{bucket}/shards")
    prepare(cfg)
    before = _modified(bucket)
    time.sleep(1.1)  # LastModified has whole seconds
    prepare(cfg)
    assert _modified(bucket) == before


def test_changed_object_is_named_and_rerun_rewrites_only_it(bucket):
    cfg = DataPrepConfig(output_root=f"{bucket}/shards")
    manifest = Manifest.load(prepare(cfg))
    victim = manifest.shard_location(manifest.splits["test"].shards[1].name)
    fs = _fs(bucket)
    data = bytearray(fs.cat_file(victim))
    data[2000] ^= 0xFF
    fs.pipe_file(victim, bytes(data))
    with pytest.raises(DataPrepError, match=f"{victim}: sha256 differs"):
        check_shards(manifest)
    with pytest.raises(DataPrepError, match=f"{victim}: sha256 differs"):
        _batches(manifest)
    before = _modified(bucket)
    time.sleep(1.1)
    prepare(cfg)
    after = _modified(bucket)
    changed = {key for key in before if after[key] != before[key]}
    manifest_key = _key(f"{bucket}/shards/{FOLDER}/manifest.json")
    assert changed == {_key(victim), manifest_key}  # the manifest comes last
    check_shards(Manifest.load(f"{bucket}/shards/{FOLDER}"))


KILL_DURING_SHARDING = """
import os, signal, sys
from data_prep import DataPrepConfig, prepare

def progress(split, done, total):
    if split == "train" and done >= 768:  # a few train shards are already uploaded
        os.kill(os.getpid(), signal.SIGKILL)

prepare(DataPrepConfig(output_root=sys.argv[1]), progress=progress)
"""


def test_killed_write_leaves_no_dataset_and_rerun_completes(bucket, digits_manifest):
    root = f"{bucket}/shards"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SHARDING, root], cwd=REPO,
                          env=subprocess_env(PYTHONPATH=str(REPO)), capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    written = _modified(bucket)
    assert any(key.endswith("train-00000.tar") for key in written)  # it was killed mid-way
    assert not any(key.endswith("manifest.json") for key in written)
    with pytest.raises(DataPrepError, match="no shard manifest here"):
        Manifest.load(f"{root}/{FOLDER}")  # a reader sees no dataset, not half of one
    manifest = Manifest.load(prepare(DataPrepConfig(output_root=root)))
    assert manifest.fingerprint == Manifest.load(digits_manifest).fingerprint
    check_shards(manifest)


def test_cifar_source_in_a_bucket(bucket, tmp_path):
    members = cifar_batches(per_batch=4, n_test=6)
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    _fs(bucket).put_file(str(archive), f"{bucket}/raw/cifar-10-python.tar.gz")
    remote = prepare(DataPrepConfig(dataset="cifar10", source=f"{bucket}/raw",
                                    output_root=tmp_path / "a"))
    from_disk = prepare(DataPrepConfig(dataset="cifar10", source=archive,
                                       output_root=tmp_path / "b"))
    assert Manifest.load(remote).fingerprint == Manifest.load(from_disk).fingerprint


def test_celeba_source_in_a_bucket(bucket, tmp_path):
    folder = write_celeba(tmp_path / "celeba", [0, 0, 0, 1, 2, 2])
    _fs(bucket).put(str(folder) + "/", f"{bucket}/raw/celeba", recursive=True)
    remote = prepare(DataPrepConfig(dataset="celeba", source=f"{bucket}/raw/celeba",
                                    output_root=tmp_path / "a"))
    from_disk = prepare(DataPrepConfig(dataset="celeba", source=folder,
                                       output_root=tmp_path / "b"))
    assert Manifest.load(remote).fingerprint == Manifest.load(from_disk).fingerprint
    with pytest.raises(DataPrepError, match="celeba/img_align_celeba/000009.jpg: image listed"):
        _fs(bucket).pipe_file(f"{bucket}/raw/celeba/list_eval_partition.txt",
                        b"000001.jpg 0\n000002.jpg 1\n000009.jpg 2\n")
        prepare(DataPrepConfig(dataset="celeba", source=f"{bucket}/raw/celeba",
                               output_root=tmp_path / "c"))


def test_missing_bucket_is_a_clear_error(bucket):
    missing = f"{storage.scheme(bucket)}://no-such-bucket-nfpipe/shards"
    with pytest.raises(FileNotFoundError, match="the bucket does not exist .*endpoint http://"
                       ) as err:
        prepare(DataPrepConfig(output_root=missing))
    assert err.value.filename.startswith(f"{missing}/{FOLDER}/")
