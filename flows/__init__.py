"""nfpipe flows: Glow, RealNVP, NICE, VAE and f-VAE behind one DensityModel interface.

The exports load on first use (PEP 562), so `flows.config` (pydantic only) is imported
without torch: the command line reads configurations in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LAYERS": "flows.layers",
    "DensityModel": "flows.density",
    "FlowModel": "flows.density",
    "VariationalModel": "flows.density",
    "initialize_from_batch": "flows.data_init",
    "build_model": "flows.build",
    "ModelConfig": "flows.config",
    "encode_levels": "flows.latents",
    "decode_levels": "flows.latents",
    "interpolate": "flows.latents",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    # cached over the attribute the import just set: `prepare` is also a submodule's name
    globals()[name] = value
    return value
