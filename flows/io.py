"""The model bundle: model.safetensors + model_config.json + meta.json (no pickle).

`load_model` rebuilds the model from the config and loads every parameter and buffer (the
ActNorm `initialized` flags included), so a loaded model is never re-initialised.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flows.build import build_model
from flows.config import ModelConfig
from flows.density import DensityModel

WEIGHTS, CONFIG, META = "model.safetensors", "model_config.json", "meta.json"
FORMAT = "nfpipe-model/1"


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` to a temporary file beside `path`, then renamed over it (all or nothing)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_model(model: DensityModel, directory: str | os.PathLike,
               meta: dict[str, Any] | None = None) -> Path:
    """Write the bundle into `directory` (created if needed); each file atomically."""
    model = getattr(model, "module", model)  # accept a DDP wrapper
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(state, tmp, {"format": FORMAT}))
    _write_text(directory / CONFIG, model.config.model_dump_json(indent=2))
    full_meta = {"format": FORMAT, "torch": torch.__version__, **(meta or {})}
    _write_text(directory / META, json.dumps(full_meta, indent=2, sort_keys=True, default=str))
    return directory


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The bundle's ModelConfig."""
    return ModelConfig.model_validate_json((Path(directory) / CONFIG).read_text())


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The bundle's meta.json ({} if absent)."""
    path = Path(directory) / META
    return json.loads(path.read_text()) if path.exists() else {}


def load_model(directory: str | os.PathLike,
               map_location: str | torch.device = "cpu") -> DensityModel:
    """Rebuild the model from `model_config.json` and load `model.safetensors` (strict), eval."""
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} is not a model bundle: {name} is missing.")
    model = build_model(load_config(directory))
    state = load_file(directory / WEIGHTS, device=str(torch.device(map_location)))
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
