"""The loader: ranks x workers split, equal train batches, exactly-once eval, seeded shuffle,
and clear errors for damaged shards."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from data_prep import DataPrepError, Manifest, make_loader
from data_prep.loader import rank_range, worker_range


def _samples(batches) -> Counter:
    """Multiset of (image bytes, label): duplicates in the source are counted, so equality
    with the source's multiset means every sample exactly once."""
    out = Counter()
    for x, y in batches:
        assert x.dtype == torch.uint8 and y.dtype == torch.long and x.ndim == 4
        for image, label in zip(x.numpy(), y.tolist(), strict=True):
            out[image.tobytes(), label] += 1
    return out


def _source(manifest, split) -> Counter:
    return _samples(make_loader(manifest, split, 1000, mode="eval"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("split", ["train", "test"])
def test_eval_world_2_by_2_workers_is_the_split_exactly_once(digits_manifest, split):
    seen, lengths = Counter(), []
    for rank in range(2):
        loader = make_loader(digits_manifest, split, 32, rank=rank, world_size=2, num_workers=2,
                             mode="eval")
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.append(len(loader))
        seen += _samples(batches)
    assert seen == _source(digits_manifest, split)
    assert sum(seen.values()) == Manifest.load(digits_manifest).splits[split].count
    assert abs(lengths[0] - lengths[1]) <= 1


@pytest.mark.timeout(60)
def test_train_world_2_by_2_workers_equal_full_batches_no_duplicates(digits_manifest):
    test_count = Manifest.load(digits_manifest).splits["test"].count  # 359: 3 shards of 128/103
    seen, lengths = Counter(), []
    for rank in range(2):
        loader = make_loader(digits_manifest, "test", 16, rank=rank, world_size=2,
                             num_workers=2, seed=7, epoch=3)
        batches = list(loader)
        assert all(len(y) == 16 for _, y in batches)
        lengths.append((len(loader), len(batches)))
        seen += _samples(batches)
    assert lengths[0] == lengths[1] == (test_count // 2 // 16,) * 2
    source = _source(digits_manifest, "test")
    assert not seen - source  # nothing duplicated or invented
    assert sum(seen.values()) == 2 * lengths[0][0] * 16


def test_train_shuffle_depends_on_seed_and_epoch_only(digits_manifest):
    def order(**kw):
        batches = list(make_loader(digits_manifest, "train", 64, **kw))
        return np.concatenate([x.numpy() for x, _ in batches])

    a = order(seed=1, epoch=0)
    np.testing.assert_array_equal(a, order(seed=1, epoch=0))
    assert not np.array_equal(a, order(seed=1, epoch=1))
    assert not np.array_equal(a, order(seed=2, epoch=0))
    loader = make_loader(digits_manifest, "train", 64, seed=1)
    loader.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in loader]),
                                  order(seed=1, epoch=1))


def test_batch_counts_do_not_depend_on_workers(digits_manifest):
    for mode, workers in itertools.product(["train", "eval"], [0, 2]):
        loader = make_loader(digits_manifest, "test", 50, num_workers=workers, mode=mode)
        sizes = [len(y) for _, y in loader]
        assert len(sizes) == len(loader)
        if mode == "train":
            assert sizes == [50] * 7
        else:
            assert sum(sizes) == 359 and len(sizes) == 8


@pytest.mark.parametrize("n", [1, 7, 100, 359, 1000])
def test_plan_arithmetic(n):
    """Eval ranges tile 0..n across ranks and workers; train ranks get equal full batches."""
    for world, workers, batch in itertools.product([1, 2, 3, 8], [1, 2, 5], [1, 4, 32]):
        covered, train = [], set()
        for rank in range(world):
            start, end, batches = rank_range(n, rank, world, batch, "eval")
            for w in range(workers):
                covered.extend(range(*worker_range(start, end, batches, batch, w, workers)))
            train.add(rank_range(n, rank, world, batch, "train")[2])
        assert covered == list(range(n))
        assert train == {n // world // batch}


def test_batch_too_large_for_train(digits_manifest):
    with pytest.raises(DataPrepError, match="fewer than world_size x batch_size = 4 x 100"):
        make_loader(digits_manifest, "test", 100, world_size=4)
    with pytest.raises(DataPrepError, match="no split 'holdout'"):
        make_loader(digits_manifest, "holdout", 8)


def _first_shard(manifest_path, split="test"):
    return Manifest.load(manifest_path).shard_paths(split)[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_names_the_shard(digits_copy, workers):
    shard = _first_shard(digits_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    loader = make_loader(digits_copy, "test", 16, num_workers=workers, mode="eval")
    with pytest.raises(DataPrepError, match=f"{shard}.*truncated or corrupt"):
        list(loader)


def test_shard_cut_at_a_member_boundary(digits_copy):
    shard = _first_shard(digits_copy)
    shard.write_bytes(shard.read_bytes()[: 4 * 1024])  # 2 samples of 2 members, 512-byte blocks
    with pytest.raises(DataPrepError, match=f"{shard}: holds 2 samples, the manifest says 128"):
        list(make_loader(digits_copy, "test", 16, mode="eval"))


def test_flipped_byte_and_missing_shard(digits_copy):
    shard = _first_shard(digits_copy)
    data = bytearray(shard.read_bytes())
    data[-20 * 1024 + 700] ^= 0x01  # inside a late member's payload
    shard.write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match=str(shard)):
        list(make_loader(digits_copy, "test", 16, mode="eval"))
    shard.unlink()
    with pytest.raises(DataPrepError, match=f"{shard}: shard is missing"):
        list(make_loader(digits_copy, "test", 16, mode="eval"))


def test_fast_tar_reader_agrees_with_webdataset(digits_manifest):
    import webdataset as wds

    from data_prep.shard_reader import read_samples

    for path in Manifest.load(digits_manifest).shard_paths("test"):
        ours, complete = read_samples(path.read_bytes())
        theirs = list(wds.WebDataset(str(path), shardshuffle=False, nodesplitter=None))
        assert complete and len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert (a["__key__"], a["png"], a["cls"]) == (b["__key__"], b["png"], b["cls"])
