"""digits: round trip through real tar shards, determinism, idempotence, the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from data_prep import DataPrepConfig, Manifest, make_loader, prepare
from data_prep.labels import attribute_names, labelled_batches
from data_prep.sources import open_source


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_manifest_describes_the_shards(digits_manifest):
    manifest = Manifest.load(digits_manifest)
    assert digits_manifest.parent.name == "digits-8x8-5bit"
    assert (manifest.dataset, manifest.image_shape, manifest.n_bins) == ("digits", (1, 8, 8), 17)
    assert set(manifest.splits) == {"train", "val", "test"}  # a val split by default
    assert sum(split.count for split in manifest.splits.values()) == 1797
    assert manifest.splits["test"].count == round(0.2 * 1797)
    assert manifest.splits["val"].count == round(0.1 * 1797)
    assert len(manifest.splits["test"].shards) >= 3  # several shards per split for ranks x workers
    assert manifest.fingerprint == hashlib.sha256(digits_manifest.read_bytes()).hexdigest()
    for name, split in manifest.splits.items():
        assert sum(s.count for s in split.shards) == split.count
        for shard, path in zip(split.shards, manifest.shard_paths(name), strict=True):
            assert path.name == shard.name and shard.name.startswith(f"{name}-")
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
    assert manifest.config["shard_max_count"] == 128 and "output_root" not in manifest.config


def test_every_image_and_label_comes_back_bit_exactly_once(digits_manifest):
    """Read the tars with tarfile alone: keys, PNG levels and `cls` match the source."""
    digits = load_digits()
    seen = Counter()
    for split in ("train", "val", "test"):
        for path in Manifest.load(digits_manifest).shard_paths(split):
            with tarfile.open(path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for name, data in members.items():
                if not name.endswith(".png"):
                    continue
                key = name.removesuffix(".png")
                index = int(key.removeprefix("digits"))
                image = np.asarray(Image.open(io.BytesIO(data)))
                assert image.dtype == np.uint8
                np.testing.assert_array_equal(image, digits.images[index].astype(np.uint8))
                assert int(members[f"{key}.cls"]) == digits.target[index]
                seen[index] += 1
    assert seen == Counter(range(1797))


def test_loader_eval_returns_the_source_in_order(digits_manifest):
    source = open_source(DataPrepConfig())
    expected = list(source.samples("test"))
    xs, ys = [], []
    for x, y in make_loader(digits_manifest, "test", 50, mode="eval"):
        assert x.dtype.is_floating_point is False and x.shape[1:] == (1, 8, 8)
        xs.append(x.numpy())
        ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    np.testing.assert_array_equal(x, np.stack([img.transpose(2, 0, 1) for _, img, *_ in expected]))
    np.testing.assert_array_equal(y, [label for _, _, label, _ in expected])


def test_classes_are_one_vs_rest_attributes(digits_manifest):
    """No attribute members or manifest key: the flags are each image's class one-hot."""
    manifest = Manifest.load(digits_manifest)
    assert manifest.classes == [str(d) for d in range(10)] and manifest.attributes is None
    assert "attributes" not in json.loads(digits_manifest.read_text())  # manifest as before
    assert attribute_names(manifest) == manifest.classes
    levels, flags = next(labelled_batches(manifest, "test", 50))
    x, y = next(iter(make_loader(digits_manifest, "test", 50, mode="eval")))
    np.testing.assert_array_equal(levels, x.numpy())
    np.testing.assert_array_equal(flags, np.eye(10, dtype=bool)[y.numpy()])


def test_shards_are_a_webdataset(digits_manifest):
    urls = [str(p) for p in Manifest.load(digits_manifest).shard_paths("test")]
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node)
    samples = list(dataset)
    assert len(samples) == Manifest.load(digits_manifest).splits["test"].count
    assert {"__key__", "png", "cls"} <= set(samples[0])


def test_same_input_gives_byte_identical_shards_and_second_run_does_nothing(tmp_path):
    first = prepare(DataPrepConfig(output_root=tmp_path / "a"))
    second = prepare(DataPrepConfig(output_root=tmp_path / "b"))
    assert _files(first.parent) == _files(second.parent)  # manifest included: no paths, no times
    before = {p.name: p.stat().st_mtime_ns for p in first.parent.iterdir()
              if not p.name.startswith(".")}
    calls = []
    assert prepare(DataPrepConfig(output_root=tmp_path / "a"),
                   progress=lambda *a: calls.append(a)) == first
    after = {p.name: p.stat().st_mtime_ns for p in first.parent.iterdir()
             if not p.name.startswith(".")}
    assert after == before and calls == []


def test_changed_settings_rewrite_and_remove_stale_shards(tmp_path):
    small = prepare(DataPrepConfig(output_root=tmp_path, shard_max_count=64))
    many = {p.name for p in small.parent.glob("*.tar")}
    calls = []
    big = prepare(DataPrepConfig(output_root=tmp_path, seed=1, shard_max_count=512),
                  progress=lambda *a: calls.append(a))
    assert big == small  # same folder
    manifest = Manifest.load(big)
    listed = {s.name for split in manifest.splits.values() for s in split.shards}
    assert {p.name for p in big.parent.glob("*.tar")} == listed and len(listed) < len(many)
    assert manifest.config["seed"] == 1
    assert calls[-1] == ("test", 359, 359)


def test_val_split_and_seed(tmp_path):
    a = Manifest.load(prepare(DataPrepConfig(output_root=tmp_path / "a")))  # val by default
    assert {k: v.count for k, v in a.splits.items()} == {"train": 1258, "val": 180, "test": 359}
    b = Manifest.load(prepare(DataPrepConfig(output_root=tmp_path / "b", seed=3)))
    assert b.splits["test"].shards[0].sha256 != a.splits["test"].shards[0].sha256
    assert json.loads(Path(a.path).read_text())["config"]["val_fraction"] == 0.1


def test_progress_reports_every_split_to_its_total(tmp_path):
    calls = []
    prepare(DataPrepConfig(output_root=tmp_path, val_fraction=0.1),
            progress=lambda *a: calls.append(a))
    last = {split: (done, total) for split, done, total in calls}
    assert last == {"train": (1258, 1258), "val": (180, 180), "test": (359, 359)}
    assert all(0 < done <= total for _, done, total in calls)
