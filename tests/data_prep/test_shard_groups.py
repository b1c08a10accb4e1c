"""Shard groups: any grouping of the blocks gives the same shards; the byte limit cuts a
block into pieces with their own names."""

from __future__ import annotations

from data_prep import DataPrepConfig, Manifest, make_loader, prepare
from data_prep.shards import SHARD_PATTERN, plan_groups


def test_groups_cover_every_block_once():
    groups = plan_groups({"train": 1000, "test": 100}, max_count=128, groups_per_split=3)
    train = [g for g in groups if g.split == "train"]
    assert [(g.first, g.last) for g in train] == [(0, 3), (3, 6), (6, 8)]
    assert [(g.start, g.stop) for g in train] == [(0, 384), (384, 768), (768, 1000)]
    assert [(g.first, g.last, g.stop) for g in groups if g.split == "test"] == [(0, 1, 100)]


def test_grouped_writing_gives_the_same_bytes(tmp_path, digits_manifest):
    alone = Manifest.load(digits_manifest)  # written in one group per split
    grouped = Manifest.load(prepare(DataPrepConfig(output_root=tmp_path / "b"), map_fn=map,
                                    groups_per_split=5))
    assert grouped.to_json() == alone.to_json()


def test_byte_limit_cuts_blocks_into_named_pieces(tmp_path):
    manifest = Manifest.load(prepare(DataPrepConfig(output_root=tmp_path,
                                                    shard_max_bytes=40_000)))
    names = [s.name for s in manifest.splits["test"].shards]
    assert "test-00000-1.tar" in names and all(SHARD_PATTERN.match(n) for n in names)
    assert all(s.count <= 128 for s in manifest.splits["test"].shards)
    seen = sum(len(y) for _, y in make_loader(manifest, "test", 50, mode="eval"))
    assert seen == manifest.splits["test"].count
