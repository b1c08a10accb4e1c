"""A shared digits shard set (builders of raw datasets live in raw_builders.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_prep import DataPrepConfig, prepare


@pytest.fixture(scope="session")
def digits_manifest(tmp_path_factory) -> Path:
    """A digits shard set (default settings) shared by read-only tests."""
    root = tmp_path_factory.mktemp("digits")
    return prepare(DataPrepConfig(output_root=root))


@pytest.fixture
def digits_copy(digits_manifest: Path, tmp_path: Path) -> Path:
    """A private copy of the digits shard set, for tests that damage it."""
    folder = tmp_path / digits_manifest.parent.name
    shutil.copytree(digits_manifest.parent, folder)
    return folder / digits_manifest.name
