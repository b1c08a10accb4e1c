"""Bad input: each gives a DataPrepError naming the file and what to do, and never leaves a
shard set that looks complete."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_builders import cifar_batches, write_celeba, write_cifar_archive, write_cifar_folder

from data_prep import DataPrepConfig, DataPrepError, Manifest, prepare
from data_prep.errors import ShardError
from data_prep.loader import make_loader

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _fails(cfg: DataPrepConfig, *patterns: str) -> str:
    with pytest.raises(DataPrepError) as info:
        prepare(cfg)
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    assert not list(Path(cfg.output_root).rglob("manifest.json"))
    assert not list(Path(cfg.output_root).rglob(".tmp-*"))
    return message


def _cifar(source, tmp_path) -> DataPrepConfig:
    return DataPrepConfig(dataset="cifar10", source=source, output_root=tmp_path / "out")


def test_cifar_missing_offline_says_which_file_to_put_where(tmp_path):
    raw = tmp_path / "raw"
    _fails(_cifar(raw, tmp_path), f"CIFAR-10 not found at {raw}", URL,
           f"save it as {raw / 'cifar-10-python.tar.gz'}", "data_prep.download: true")
    _fails(_cifar(raw / "cifar-10-python.tar.gz", tmp_path),
           f"save it as {raw / 'cifar-10-python.tar.gz'}")
    _fails(_cifar(None, tmp_path), "data_prep.source is not set for cifar10", URL,
           "data/raw/cifar-10-python.tar.gz")


def test_cifar_truncated_and_corrupt_archive(tmp_path):
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_batches())
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _fails(_cifar(archive, tmp_path), f"{archive}: truncated or corrupt CIFAR-10 archive",
           f"download it again from {URL}")
    archive.write_bytes(b"<html>not found</html>" * 100)
    _fails(_cifar(archive, tmp_path), f"{archive}: truncated or corrupt CIFAR-10 archive")


def test_cifar_archive_without_a_member(tmp_path):
    members = cifar_batches()
    del members["test_batch"]
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    _fails(_cifar(archive, tmp_path), str(archive), "lacks test_batch")
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    _fails(_cifar(folder, tmp_path), f"{folder}: incomplete CIFAR-10 folder: missing test_batch")


def test_cifar_wrong_image_size_and_bad_pickle(tmp_path):
    members = cifar_batches()
    members["data_batch_3"] = pickle.dumps(
        {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    folder = write_cifar_folder(tmp_path / "a" / "cifar-10-batches-py", members)
    _fails(_cifar(folder, tmp_path), "data_batch_3['data'] must be uint8 [N, 3072]",
           "got uint8 [4, 1024]")
    members["data_batch_3"] = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8),
                                            b"labels": [0, 1, 2, 12]}, protocol=2)
    folder = write_cifar_folder(tmp_path / "b" / "cifar-10-batches-py", members)
    _fails(_cifar(folder, tmp_path), "data_batch_3['labels'] must be 4 class indices in 0..9")
    members["data_batch_3"] = pickle.dumps(Path("x"))  # not an array: refused, nothing runs
    folder = write_cifar_folder(tmp_path / "c" / "cifar-10-batches-py", members)
    _fails(_cifar(folder, tmp_path), "data_batch_3 is not a CIFAR-10 batch", "refusing")


def _celeba(source, tmp_path, **kw) -> DataPrepConfig:
    return DataPrepConfig(dataset="celeba", source=source, output_root=tmp_path / "out", **kw)


def test_celeba_missing_folder_partition_file_and_image(tmp_path):
    _fails(_celeba(tmp_path / "nowhere", tmp_path), f"{tmp_path / 'nowhere'}: CelebA folder "
           "not found", "img_align_celeba/", "list_eval_partition.txt")
    _fails(_celeba(None, tmp_path), "data_prep.source is not set for celeba")
    root = write_celeba(tmp_path / "celeba", [0, 0, 1, 2])
    partition = root / "list_eval_partition.txt"
    partition.rename(tmp_path / "saved.txt")
    _fails(_celeba(root, tmp_path), f"{partition}: partition file not found",
           "put Eval/list_eval_partition.txt (from")
    (tmp_path / "saved.txt").rename(partition)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    _fails(_celeba(root, tmp_path), f"{root / 'img_align_celeba' / '000002.jpg'}: image listed "
           f"in {partition} is missing")


def test_celeba_bad_partition_lines(tmp_path):
    root = write_celeba(tmp_path / "celeba", [0, 1, 2])
    partition = root / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg three\n")
    _fails(_celeba(root, tmp_path), f"{partition}:2: expected '<image>.jpg <0|1|2>'")
    partition.write_text("000001.jpg 0\n000002.jpg 1\n")
    _fails(_celeba(root, tmp_path), f"{partition}: lists no test images")
    partition.write_text("000001.jpg 0\n000003.jpg 2\n")  # models are chosen on val
    _fails(_celeba(root, tmp_path), f"{partition}: lists no val images")


def test_celeba_missing_truncated_or_inconsistent_attribute_file(tmp_path):
    """list_attr_celeba.txt: missing names the file and where to get it; a fault names the
    line."""
    root = write_celeba(tmp_path / "celeba", [0, 1, 2, 0])
    attributes = root / "list_attr_celeba.txt"
    good = attributes.read_text()
    attributes.unlink()
    _fails(_celeba(root, tmp_path), f"{attributes}: attribute file not found",
           "put Anno/list_attr_celeba.txt (from https://mmlab.ie.cuhk.edu.hk/")
    lines = good.splitlines(keepends=True)
    attributes.write_text("".join(lines[:4]) + lines[4][:40])  # cut inside line 5
    _fails(_celeba(root, tmp_path), f"{attributes}:5: expected '<image>.jpg' and 40 values")
    attributes.write_text("".join(lines[:4]))  # cut after line 4: 2 of 4 images
    _fails(_celeba(root, tmp_path), f"{attributes}:1: says 4 images but the file lists 2")
    attributes.write_text("".join(lines[:3]) + lines[3].replace(" 1", " 0", 1) + "".join(
        lines[4:]))
    _fails(_celeba(root, tmp_path), f"{attributes}:4: value '0' for 000002.jpg is not -1 or 1")
    attributes.write_text("".join(lines[:3]) + lines[2] + "".join(lines[4:]))
    _fails(_celeba(root, tmp_path), f"{attributes}:4: 000001.jpg is listed twice")
    attributes.write_text("".join(lines[:5]) + lines[5].replace("000004", "000009"))
    _fails(_celeba(root, tmp_path), f"{attributes}:6: 000009.jpg is not in "
           f"{root / 'list_eval_partition.txt'}")
    attributes.write_text("x\n" + "".join(lines[1:]))
    _fails(_celeba(root, tmp_path), f"{attributes}:1: expected the number of images")
    attributes.write_text(good)
    assert Manifest.load(prepare(_celeba(root, tmp_path))).splits["train"].count == 2


def test_celeba_wrong_mode_and_size(tmp_path):
    root = write_celeba(tmp_path / "celeba", [0, 1, 2, 2])
    image = root / "img_align_celeba" / "000004.jpg"  # in test: written after train
    Image.new("L", (178, 218), 128).save(image)
    _fails(_celeba(root, tmp_path), f"{image}: image mode L, expected RGB")
    Image.new("RGB", (120, 140)).save(image)
    _fails(_celeba(root, tmp_path), f"{image}: image is 120x140, smaller than the 148x148 crop")
    image.write_bytes(b"not a jpeg")
    _fails(_celeba(root, tmp_path), f"{image}: unreadable image")


def test_crash_mid_write_leaves_no_complete_looking_set(tmp_path):
    """A complete set exists; a changed run dies half-way: the old manifest must be gone (its
    shards may be overwritten) and no temporary file is left; the next run completes."""
    cfg = DataPrepConfig(output_root=tmp_path)
    path = prepare(cfg)
    old_first = (path.parent / "train-00000.tar").read_bytes()

    def crash(split, done, total):
        if done >= 512:
            raise KeyboardInterrupt  # like Ctrl-C or a killed worker, mid-split

    with pytest.raises(KeyboardInterrupt):
        prepare(DataPrepConfig(output_root=tmp_path, seed=5), progress=crash)
    assert not path.exists()
    assert not list(path.parent.glob(".tmp-*"))
    # shards of the old set were overwritten by the new run: the old manifest could not stay
    assert (path.parent / "train-00000.tar").read_bytes() != old_first
    assert prepare(DataPrepConfig(output_root=tmp_path, seed=5)) == path
    assert Manifest.load(path).config["seed"] == 5


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    cfg = DataPrepConfig(output_root=tmp_path)
    folder = prepare(cfg).parent
    (folder / "manifest.json").unlink()  # killed before the manifest: not complete
    (folder / ".tmp-train-00003.tar").write_bytes(b"half a shard")
    (folder / "train-00099.tar").write_bytes(b"from an older layout")
    prepare(cfg)
    names = {p.name for p in folder.iterdir()}
    assert ".tmp-train-00003.tar" not in names and "train-00099.tar" not in names
    assert "manifest.json" in names


def test_damaged_shard_in_place_is_rewritten(tmp_path):
    cfg = DataPrepConfig(output_root=tmp_path)
    path = prepare(cfg)
    shard = path.parent / "train-00002.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[:1000])
    assert prepare(cfg) == path and shard.read_bytes() == good


def _lie_about_a_count(path: Path) -> None:
    """Edit the manifest as a bad copy or a hand edit would: one shard's count is off by one."""
    raw = json.loads(path.read_text())
    raw["splits"]["test"]["shards"][0]["count"] -= 1
    path.write_text(json.dumps(raw))


def test_a_manifest_lying_about_a_count_is_rewritten_and_the_loader_advice_works(tmp_path):
    cfg = DataPrepConfig(output_root=tmp_path)
    path = prepare(cfg)
    good = path.read_bytes()
    _lie_about_a_count(path)
    with pytest.raises(ShardError, match="the manifest says .*run the data_prep stage again"):
        list(make_loader(path, "test", 50, mode="eval"))
    assert prepare(cfg) == path and path.read_bytes() == good  # the advice: run it again
    assert sum(len(x) for x, _ in make_loader(path, "test", 50, mode="eval")) == \
        Manifest.load(path).splits["test"].count


def test_force_rewrites_a_manifest_that_looks_up_to_date(tmp_path):
    cfg = DataPrepConfig(output_root=tmp_path)
    path = prepare(cfg)
    good = path.read_bytes()
    path.write_text(json.dumps(json.loads(good), indent=4))  # same content, other bytes
    assert prepare(cfg) == path and path.read_bytes() != good  # up to date: left alone
    assert prepare(cfg, force=True) == path and path.read_bytes() == good


def test_manifest_load_errors(tmp_path):
    with pytest.raises(DataPrepError, match=re.escape(f"{tmp_path / 'manifest.json'}: no shard")):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(DataPrepError, match="not a valid shard manifest"):
        Manifest.load(tmp_path / "manifest.json")
