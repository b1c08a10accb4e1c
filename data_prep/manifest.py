"""`manifest.json`: what a shard folder holds, written last so a complete set is recognisable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from data_prep import storage
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
    attributes: list[str] | None = None  # names of each sample's `attr` flags (CelebA)
    source_fingerprint: str
    config: dict[str, Any]  # the settings that shaped the shards (no paths)
    splits: dict[str, SplitInfo]

    _location: str | None = PrivateAttr(None)  # absolute local path or URL of the file
    _file_sha256: str | None = PrivateAttr(None)

    @classmethod
    def load(cls, location: str | Path) -> Manifest:
        """Read `manifest.json` (or the folder or prefix holding it), local or a URL."""
        location = manifest_location(location)
        try:
            raw = storage.read_bytes(location)
        except FileNotFoundError:
            raise DataPrepError(
                f"{location}: no shard manifest here; run the data_prep stage to write the "
                "shards"
            ) from None
        try:
            manifest = cls.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise DataPrepError(
                f"{location}: not a valid shard manifest ({exc}); delete it and run the "
                "data_prep stage again"
            ) from None
        manifest._location = location
        manifest._file_sha256 = hashlib.sha256(raw).hexdigest()
        return manifest

    @property
    def location(self) -> str:
        """Where this manifest was loaded from or written to: an absolute path or a URL."""
        if self._location is None:
            raise ValueError("manifest has no location: load() or write() it first")
        return self._location

    @property
    def folder(self) -> str:
        """The folder or prefix holding the shards: an absolute path or a URL."""
        return storage.parent(self.location)

    @property
    def path(self) -> Path | str | None:
        """Where this manifest lies: a Path when local, the URL string when remote."""
        if self._location is None:
            return None
        return self._location if storage.is_remote(self._location) else Path(self._location)

    @property
    def root(self) -> Path | str:
        """The folder holding the shards: a Path when local, the URL string when remote."""
        folder = self.folder
        return folder if storage.is_remote(folder) else Path(folder)

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest file: the identity of this shard set."""
        return self._file_sha256 or hashlib.sha256(self.to_json()).hexdigest()

    def shard_location(self, name: str) -> str:
        """Absolute path or URL of one shard."""
        return storage.join(self.folder, name)

    def shard_paths(self, split: str) -> list[Path | str]:
        """Paths (URLs when remote) of a split's shards, in manifest order."""
        root = self.root
        if isinstance(root, str):
            return [storage.join(root, shard.name) for shard in self.split(split).shards]
        return [root / shard.name for shard in self.split(split).shards]

    def split(self, name: str) -> SplitInfo:
        """A split by name, with an error that lists the ones present."""
        if name not in self.splits:
            raise DataPrepError(
                f"{self._location}: no split {name!r} (has {', '.join(sorted(self.splits))})"
            )
        return self.splits[name]

    def require_split(self, name: str) -> SplitInfo:
        """A split that training or evaluation cannot do without; shards written without it
        (the val split before it was written by default) are refused with how to rebuild."""
        if name in self.splits and self.splits[name].count > 0:
            return self.splits[name]
        setting = " with data_prep.val_fraction > 0 (the default)" if name == "val" else ""
        raise DataPrepError(
            f"{self._location}: these shards have no {name!r} split (has "
            f"{', '.join(sorted(self.splits))}); models are chosen on the val split and scored "
            f"once on the test split. Rebuild them: run data_prep again{setting} "
            "(`nfpipe run --stages data_prep --force`)"
        )

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, so equal manifests are byte-identical. A set without
        attributes leaves the key out, so its manifest (and fingerprint) is what it was
        before attributes existed."""
        fields = self.model_dump(mode="json", exclude={"attributes"} if self.attributes is None
                                 else set())
        text = json.dumps(fields, indent=2, sort_keys=True)
        return (text + "\n").encode()

    def write(self, location: str | Path) -> str:
        """Write atomically (local: temporary file, fsync, rename; object store: one PUT)."""
        data = self.to_json()
        location = storage.absolute(location)
        storage.write_bytes(location, data)
        self._location = location
        self._file_sha256 = hashlib.sha256(data).hexdigest()
        return location


def manifest_location(location: str | Path) -> str:
    """The manifest file of a location that names it or the folder holding it."""
    location = storage.absolute(location)
    if location.endswith(".json"):
        return location
    if storage.is_remote(location) or Path(location).is_dir():
        return storage.join(location, MANIFEST_NAME)
    return location
