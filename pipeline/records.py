"""Stage records: what each stage consumed and produced, written atomically as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RecordStatus = Literal["ok", "failed", "running"]


@dataclass
class StageRecord:
    """What a stage consumed and produced, written before it runs and when it ends."""

    stage: str
    status: RecordStatus
    fingerprint: str  # hash of this stage's config and its upstream fingerprints
    config_hash: str
    inputs: dict[str, str] = field(default_factory=dict)  # upstream stage -> its fingerprint
    outputs: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    error: str | None = None


def record_path(workdir: Path, stage: str) -> Path:
    return workdir / "records" / f"{stage}.json"


def read_record(workdir: Path, stage: str) -> StageRecord | None:
    path = record_path(workdir, stage)
    if not path.exists():
        return None
    try:
        return StageRecord(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None  # a damaged record only means the stage runs again


def write_record(workdir: Path, record: StageRecord) -> None:
    write_json_atomic(record_path(workdir, record.stage), asdict(record))


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def stable_hash(value: Any) -> str:
    """sha256 of the canonical JSON form of `value` (pydantic models via model_dump)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def missing_paths(outputs: dict[str, Any]) -> list[str]:
    """Absolute local paths named in `outputs` that no longer exist (URLs are not looked up:
    a stage that must check its remote outputs does so in its `recheck`)."""
    return [
        v
        for v in outputs.values()
        if isinstance(v, str) and v.startswith("/") and not Path(v).exists()
    ]
