"""cifar10: the official pickled format, from the .tar.gz and from the extracted folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from raw_builders import cifar_batches, unpickle, write_cifar_archive, write_cifar_folder

from data_prep import DataPrepConfig, Manifest, make_loader, prepare


def _expected(members: dict[str, bytes], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    batches = [unpickle(members[name]) for name in names]
    data = np.concatenate([b["data"] for b in batches])
    x = data.reshape(-1, 3, 32, 32)  # official layout: channel planes of 32x32 rows
    return x, np.concatenate([b["labels"] for b in batches])


def _read_all(manifest: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    batches = list(make_loader(manifest, split, 7, mode="eval"))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def test_archive_round_trip_bit_exact(tmp_path):
    members = cifar_batches()
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    path = prepare(DataPrepConfig(dataset="cifar10", source=archive, output_root=tmp_path / "out"))
    manifest = Manifest.load(path)
    assert path.parent.name == "cifar10-32x32-8bit"
    assert (manifest.image_shape, manifest.n_bins) == ((3, 32, 32), 256)
    assert manifest.classes[:2] == ["airplane", "automobile"]
    # a val split by default: 10% of the official train images, the test split untouched
    assert {k: v.count for k, v in manifest.splits.items()} == {"train": 18, "val": 2, "test": 6}
    x, y = _read_all(path, "test")
    ex, ey = _expected(members, ["test_batch"])
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    # train and val together are the official train images, each once, with its label
    parts = [_read_all(path, split) for split in ("train", "val")]
    got = sorted(bytes(xi) + bytes([yi]) for x, y in parts for xi, yi in zip(x, y, strict=True))
    ex, ey = _expected(members, TRAIN)
    assert got == sorted(bytes(xi) + bytes([yi]) for xi, yi in zip(ex, ey, strict=True))


def test_folder_and_archive_give_the_same_shards(tmp_path):
    members = cifar_batches(bytes_keys=False)  # str keys, as a Python 3 re-pickle would have
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    folder = write_cifar_folder(tmp_path / "x" / "cifar-10-batches-py", members)
    a = prepare(DataPrepConfig(dataset="cifar10", source=archive, output_root=tmp_path / "a"))
    b = prepare(DataPrepConfig(dataset="cifar10", source=folder, output_root=tmp_path / "b"))
    c = prepare(DataPrepConfig(dataset="cifar10", source=folder.parent,
                               output_root=tmp_path / "c"))
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    for shard in Manifest.load(a).splits["train"].shards:
        assert (a.parent / shard.name).read_bytes() == (b.parent / shard.name).read_bytes()
    x, _ = _read_all(b, "test")
    np.testing.assert_array_equal(x, _expected(members, ["test_batch"])[0])
    # a folder that holds the archive works too, and a second run is a no-op
    mtime = a.stat().st_mtime_ns
    assert prepare(DataPrepConfig(dataset="cifar10", source=tmp_path,
                                  output_root=tmp_path / "a")) == a
    assert a.stat().st_mtime_ns == mtime


def test_val_is_carved_from_train_by_seed(tmp_path):
    members = cifar_batches(per_batch=8)
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    path = prepare(DataPrepConfig(dataset="cifar10", source=archive, val_fraction=0.25,
                                  output_root=tmp_path))
    counts = {k: v.count for k, v in Manifest.load(path).splits.items()}
    assert counts == {"train": 30, "val": 10, "test": 6}
    train, val = _read_all(path, "train")[0], _read_all(path, "val")[0]
    together = np.concatenate([train, val]).reshape(40, -1)
    expected = _expected(members, TRAIN)[0].reshape(40, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, expected))


@pytest.mark.parametrize("keys", [True, False])
def test_labels_and_classes_from_meta(tmp_path, keys):
    members = cifar_batches(bytes_keys=keys, seed=5)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    path = prepare(DataPrepConfig(dataset="cifar10", source=folder, output_root=tmp_path / "o"))
    assert Manifest.load(path).classes[-1] == "truck"
    np.testing.assert_array_equal(_read_all(path, "test")[1],
                                  _expected(members, ["test_batch"])[1])
