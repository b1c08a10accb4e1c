"""celeba: the aligned layout with its partition file; center crop, resize, n_bits."""

from __future__ import annotations

import numpy as np
from PIL import Image
from raw_builders import CELEBA_ATTRIBUTES, celeba_flags, write_celeba

from data_prep import DataPrepConfig, Manifest, make_loader, prepare
from data_prep.labels import attribute_names, labelled_batches

PARTITIONS = [0, 0, 0, 1, 2, 0, 2, 1, 0]


def _reference(path, crop=148, size=64, n_bits=5) -> np.ndarray:
    """The recipe written out independently: center crop, bilinear resize, top n_bits, CHW."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop)).resize((size, size),
                                                                    Image.Resampling.BILINEAR)
    return (np.asarray(image) // 2 ** (8 - n_bits)).transpose(2, 0, 1)


def _read(manifest, split):
    batches = list(make_loader(manifest, split, 4, mode="eval"))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))


def test_official_splits_crop_resize_and_bits(tmp_path):
    root = write_celeba(tmp_path / "celeba", PARTITIONS)
    path = prepare(DataPrepConfig(dataset="celeba", source=root, output_root=tmp_path / "out"))
    manifest = Manifest.load(path)
    assert path.parent.name == "celeba-64x64-5bit"
    assert (manifest.image_shape, manifest.n_bins, manifest.classes) == ((3, 64, 64), 32, None)
    # the official val partition by default
    assert {k: v.count for k, v in manifest.splits.items()} == {"train": 5, "val": 2, "test": 2}
    for split, part in [("train", 0), ("val", 1), ("test", 2)]:
        x, y = _read(path, split)
        files = [i for i, p in enumerate(PARTITIONS, start=1) if p == part]
        expected = np.stack([_reference(root / "img_align_celeba" / f"{i:06d}.jpg")
                             for i in files])
        np.testing.assert_array_equal(x, expected)
        assert x.max() < 32 and (y == -1).all()  # levels 0..31; CelebA has no class labels


def test_the_40_attributes_travel_with_each_image(tmp_path):
    """The manifest names the official attributes in file order; each sample's `attr` member
    holds its image's flags exactly, read back with its levels in manifest order."""
    root = write_celeba(tmp_path / "celeba", PARTITIONS)
    path = prepare(DataPrepConfig(dataset="celeba", source=root, output_root=tmp_path / "out"))
    manifest = Manifest.load(path)
    assert manifest.attributes == attribute_names(manifest) == CELEBA_ATTRIBUTES
    flags = celeba_flags(len(PARTITIONS))
    for split, part in [("train", 0), ("val", 1), ("test", 2)]:
        rows = [i for i, p in enumerate(PARTITIONS) if p == part]
        batches = list(labelled_batches(manifest, split, 2))
        levels = np.concatenate([b[0] for b in batches])
        got = np.concatenate([b[1] for b in batches])
        assert got.dtype == bool and got.shape == (len(rows), 40)
        np.testing.assert_array_equal(got, flags[rows])
        np.testing.assert_array_equal(levels, _read(path, split)[0])
    first = next(labelled_batches(manifest, "train", 4, limit=3))
    assert first[0].shape == (3, 3, 64, 64) and first[1].shape == (3, 40)


def test_val_partition_and_other_sizes(tmp_path):
    root = write_celeba(tmp_path / "celeba", PARTITIONS)
    cfg = DataPrepConfig(dataset="celeba", source=root, output_root=tmp_path / "out",
                         val_fraction=0.1, crop=128, size=32, n_bits=8)
    path = prepare(cfg)
    manifest = Manifest.load(path)
    assert path.parent.name == "celeba-32x32-8bit" and manifest.n_bins == 256
    assert {k: v.count for k, v in manifest.splits.items()} == {"train": 5, "val": 2, "test": 2}
    x, _ = _read(path, "val")
    expected = [_reference(root / "img_align_celeba" / f"{i:06d}.jpg", 128, 32, 8) for i in (4, 8)]
    np.testing.assert_array_equal(x, np.stack(expected))


def test_idempotent_and_content_fingerprint(tmp_path):
    root = write_celeba(tmp_path / "celeba", PARTITIONS)
    cfg = DataPrepConfig(dataset="celeba", source=root, output_root=tmp_path / "out")
    path = prepare(cfg)
    mtimes = {p: p.stat().st_mtime_ns for p in path.parent.glob("*.*")}
    assert prepare(cfg) == path
    assert {p: p.stat().st_mtime_ns for p in path.parent.glob("*.*")} == mtimes
    # a changed image (same name) is new content: the set is rewritten
    Image.new("RGB", (178, 218), (200, 10, 10)).save(root / "img_align_celeba" / "000001.jpg")
    before = Manifest.load(path).source_fingerprint
    prepare(cfg)
    assert Manifest.load(path).source_fingerprint != before
