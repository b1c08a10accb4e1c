"""`manifest.json`: what a shard folder holds, written last so a complete set is recognisable."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from data_prep.errors import DataPrepError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ShardInfo(BaseModel):
    """One tar file: its name inside the folder, how many samples it holds, its sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    count: int
    sha256: str


class SplitInfo(BaseModel):
    """One split (train, val, test): total samples and its shards in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int
    shards: list[ShardInfo]


class Manifest(BaseModel):
    """The description of a shard folder.

    `fingerprint` (sha256 of the manifest file) is the dataset identity used in MLflow tags and
    by the promotion gate; it holds no paths or timestamps, so the same source and config give
    the same fingerprint on any machine.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT_VERSION
    dataset: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    n_bins: int
    encoding: Literal["png"] = "png"
    classes: list[str] | None = None
    source_fingerprint: str
    config: dict[str, Any]  # the settings that shaped the shards (no paths)
    splits: dict[str, SplitInfo]

    _path: Path | None = PrivateAttr(None)
    _file_sha256: str | None = PrivateAttr(None)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read `manifest.json` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataPrepError(
                f"{path}: no shard manifest here; run the data_prep stage to write the shards"
            ) from None
        try:
            manifest = cls.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise DataPrepError(
                f"{path}: not a valid shard manifest ({exc}); delete it and run the data_prep "
                "stage again"
            ) from None
        manifest._path = path.resolve()
        manifest._file_sha256 = hashlib.sha256(raw).hexdigest()
        return manifest

    @property
    def path(self) -> Path | None:
        """Where this manifest was loaded from or written to."""
        return self._path

    @property
    def root(self) -> Path:
        """The folder holding the shards."""
        if self._path is None:
            raise ValueError("manifest has no location: load() or write() it first")
        return self._path.parent

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest file: the identity of this shard set."""
        return self._file_sha256 or hashlib.sha256(self.to_json()).hexdigest()

    def shard_paths(self, split: str) -> list[Path]:
        """Absolute paths of a split's shards, in manifest order."""
        return [self.root / shard.name for shard in self.split(split).shards]

    def split(self, name: str) -> SplitInfo:
        """A split by name, with an error that lists the ones present."""
        if name not in self.splits:
            raise DataPrepError(
                f"{self._path}: no split {name!r} (has {', '.join(sorted(self.splits))})"
            )
        return self.splits[name]

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, so equal manifests are byte-identical."""
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)
        return (text + "\n").encode()

    def write(self, path: Path) -> Path:
        """Write atomically: a temporary file, fsync, then rename over `path`."""
        data = self.to_json()
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._path = path.resolve()
        self._file_sha256 = hashlib.sha256(data).hexdigest()
        return path
