"""The registered model: an MLflow pyfunc `PythonModel` around a `flows` model bundle.

The model is logged "from code" (`deploy/pyfunc_model.py` is executed at load time), its
artifacts are the bundle files (safetensors weights, `model_config.json`, `meta.json`: no
pickle), and the `flows` package and this module travel with it as `code_paths`, so any
process with MLflow, torch, safetensors and pydantic can
`mlflow.pyfunc.load_model("models:/NAME@champion")`.

Request forms of `predict(model_input, params)` (and of `/invocations` on any server):

* score (default): `model_input` uint8 levels, shape [B, C, H, W], values in [0, n_bins);
  params `{"k": 1, "seed": 0}` -> float64 [B], bits/dim per image: the importance-weighted
  bound over k draws (dequantisation noise, and latents for VAE / f-VAE), seeded, so the same
  request gives the same numbers. Over HTTP: `{"inputs": [[[[...]]]]}`.
* sample: params `{"mode": "sample", "n": 16, "temperature": 0.7, "seed": 0}` -> uint8 levels
  [n, C, H, W]; `model_input` is ignored (the MLflow scoring protocol requires one, so send
  any valid batch, e.g. the input example: one image of zeros).

Bad requests (shape, dtype, levels >= n_bins, too many images or samples) raise
`MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with 400.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from flows.scoring import sample_levels, score_levels

BUNDLE_FILES = ("model.safetensors", "model_config.json", "meta.json")
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT_PATH = "model"  # name of the logged model inside its run
MAX_K = 1000  # importance-weighted draws per image in one request


class BadRequest(ValueError):
    """A request the model cannot serve; the message says what was expected."""


@dataclass(frozen=True)
class Limits:
    """What one `predict` call may ask for (stored as the pyfunc's `model_config`)."""

    max_batch: int = 1024
    max_samples: int = 256


def check_images(x: Any, image_shape: tuple[int, int, int], n_bins: int, max_batch: int) -> Any:
    """Validate a batch of levels and return it as a uint8 ndarray [B, C, H, W]."""
    if isinstance(x, dict) and len(x) == 1:  # a single named tensor
        x = next(iter(x.values()))
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pandas
        raise BadRequest("Expected a uint8 array [B, C, H, W] of levels, got a DataFrame.")
    array = x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else x
    array = np.asarray(array)
    if array.dtype == object:
        raise BadRequest("Expected a rectangular array of integer levels (ragged or mixed input).")
    if array.dtype.kind not in "ui":
        raise BadRequest(
            f"Expected integer levels (uint8) in [0, {n_bins}), got dtype {array.dtype}."
        )
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise BadRequest(f"Expected shape [B, {', '.join(map(str, image_shape))}] "
                         f"(B, C, H, W), got {list(array.shape)}.")
    if not 1 <= array.shape[0] <= max_batch:
        raise BadRequest(f"Expected 1 to {max_batch} images per request, got {array.shape[0]}.")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= n_bins:
        raise BadRequest(
            f"Levels must lie in [0, {n_bins}) for this model (n_bins={n_bins}); got values "
            f"in [{low}, {high}]. Send the dataset's levels, not 8-bit pixel values."
        )
    return array.astype(np.uint8, copy=False)


def check_sample_request(n: Any, temperature: Any, max_samples: int) -> tuple[int, float]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise BadRequest(f"'n' must be an integer number of samples, got {n!r}.")
    if not 1 <= int(n) <= max_samples:
        raise BadRequest(f"'n' must be between 1 and {max_samples} samples, got {n}.")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise BadRequest(f"'temperature' must be a number, got {temperature!r}.") from None
    if not 0.0 < t <= 10.0 or not np.isfinite(t):
        raise BadRequest(f"'temperature' must be in (0, 10], got {temperature!r}.")
    return int(n), t


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadRequest(f"'{name}' must be an integer, got {value!r}.")
    if not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {value}.")
    return int(value)


class FlowPyfunc(PythonModel):
    """`flows.DensityModel` as an MLflow pyfunc: score images (bits/dim) or draw samples.

    Rebuilt in `load_context` from the bundle artifacts by `flows.io.load_model` (config +
    safetensors), in eval mode on CPU. Calls are serialised by a lock: the forward passes share
    one model instance, and a server may call `predict` from several threads.
    """

    def __init__(self) -> None:
        self.model = None
        self.meta: dict[str, Any] = {}
        self.limits = Limits()
        self._lock = threading.Lock()

    def load_context(self, context: Any) -> None:
        from flows.io import load_model

        bundle = Path(context.artifacts["bundle"])
        self.model = load_model(bundle, map_location="cpu").eval()
        self.meta = json.loads((bundle / "meta.json").read_text())
        cfg = dict(context.model_config or {})
        self.limits = Limits(
            max_batch=int(cfg.get("max_batch", Limits.max_batch)),
            max_samples=int(cfg.get("max_samples", Limits.max_samples)),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.config.image_shape)

    @property
    def n_bins(self) -> int:
        return int(self.model.config.n_bins)

    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Score (default) or sample; see the module docstring for the request forms.

        (`np.ndarray` is a hint MLflow takes as is: no conversion; the explicit signature,
        `signature_for`, describes the input.)
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.run_request(model_input, params or {})
        except BadRequest as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None

    def run_request(self, model_input: Any, params: Mapping[str, Any]) -> np.ndarray:
        """`predict` without MLflow's wrapping; raises `BadRequest` for bad requests."""
        mode = params.get("mode", "score") or "score"
        seed = _check_int("seed", params.get("seed", 0), 0, 2**63 - 1)
        if mode == "sample":
            n, temperature = check_sample_request(
                params.get("n", 16), params.get("temperature", 1.0), self.limits.max_samples
            )
            with self._lock:
                return sample_levels(self.model, n, temperature, generator=seed)
        if mode != "score":
            raise BadRequest(f"'mode' must be 'score' or 'sample', got {mode!r}.")
        k = _check_int("k", params.get("k", 1), 1, MAX_K)
        x = check_images(model_input, self.image_shape, self.n_bins, self.limits.max_batch)
        with self._lock:
            return score_levels(self.model, x, k=k, generator=seed)


def signature_for(image_shape: tuple[int, int, int]):
    """Input: uint8 [-1, C, H, W]; params: mode, k, seed, n, temperature."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))])
    params = ParamSchema([
        ParamSpec("mode", "string", "score"),
        ParamSpec("k", "long", 1),
        ParamSpec("seed", "long", 0),
        ParamSpec("n", "long", 16),
        ParamSpec("temperature", "double", 1.0),
    ])
    return ModelSignature(inputs=inputs, params=params)


def pip_requirements() -> list[str]:
    """Pinned to what is installed here: the model needs torch, safetensors, pydantic, mlflow."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "safetensors", "pydantic",
                                                   "numpy")]


def stage_bundle(bundle_dir: Path, into: Path) -> Path:
    """Copy the three bundle files (only those) to `into/bundle` for logging."""
    target = into / "bundle"
    target.mkdir(parents=True)
    for name in BUNDLE_FILES:
        source = Path(bundle_dir) / name
        if not source.is_file():
            raise FileNotFoundError(f"{bundle_dir} is not a model bundle: {name} is missing")
        shutil.copy2(source, target / name)
    return target


def stage_code(into: Path) -> list[str]:
    """Copies (no caches) of the `flows` package and of the part of `deploy` the model needs
    at load time, to ship as `code_paths`."""
    import flows

    source = Path(flows.__file__).parent
    shutil.copytree(source, into / "code" / "flows",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    package = into / "code" / "deploy"
    package.mkdir(parents=True)
    for name in ("__init__.py", "pyfunc.py"):
        shutil.copy2(Path(__file__).with_name(name), package / name)
    return [str(into / "code" / "flows"), str(package)]


def log_bundle(bundle_dir: str | Path, limits: Limits = Limits(), name: str = ARTIFACT_PATH):
    """Log the bundle as a pyfunc model into the active MLflow run; returns its `ModelInfo`."""
    import mlflow

    bundle_dir = Path(bundle_dir)
    config = json.loads((bundle_dir / "model_config.json").read_text())
    image_shape = tuple(config["image_shape"])
    example = np.zeros((1, *image_shape), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="nfpipe-pyfunc-") as tmp:
        bundle = stage_bundle(bundle_dir, Path(tmp))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"bundle": str(bundle)},
            code_paths=stage_code(Path(tmp)),
            model_config={"max_batch": limits.max_batch, "max_samples": limits.max_samples},
            signature=signature_for(image_shape),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={"image_shape": list(image_shape), "n_bins": int(config["n_bins"]),
                      "family": config["name"], "request_forms": REQUEST_FORMS},
        )


REQUEST_FORMS = {
    "score": "inputs: uint8 levels [B, C, H, W]; params {k, seed} -> bits/dim [B]",
    "sample": "params {mode: 'sample', n, temperature, seed} -> uint8 levels [n, C, H, W]; "
    "inputs ignored (send the input example)",
}
