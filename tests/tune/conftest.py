"""Tune tests: real digits shards, tiny Glow trials, a pipeline file per sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep import DataPrepConfig, prepare


@pytest.fixture(scope="session")
def shards_root(tmp_path_factory) -> Path:
    """A folder holding the digits shard set (the data_prep stage finds it up to date)."""
    root = tmp_path_factory.mktemp("tune-shards")
    prepare(DataPrepConfig(dataset="digits", output_root=root))
    return root


@pytest.fixture(scope="session")
def manifest_path(shards_root: Path) -> Path:
    return prepare(DataPrepConfig(dataset="digits", output_root=shards_root))
