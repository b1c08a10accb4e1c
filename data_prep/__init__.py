"""Raw image datasets -> webdataset tar shards + manifest, and a rank-aware loader for them.

The exports load on first use (PEP 562), so `data_prep.config` is imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataPrepConfig": "data_prep.config",
    "DataPrepError": "data_prep.errors",
    "Manifest": "data_prep.manifest",
    "ShardError": "data_prep.errors",
    "ShardLoader": "data_prep.loader",
    "make_loader": "data_prep.loader",
    "prepare": "data_prep.prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    # cached over the attribute the import just set: `prepare` is also a submodule's name
    globals()[name] = value
    return value
