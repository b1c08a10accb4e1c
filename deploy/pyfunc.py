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
  request gives the same numbers.
* sample: params `{"mode": "sample", "n": 16, "temperature": 0.7, "seed": 0}` -> uint8 levels
  [n, C, H, W]; `model_input` is ignored, but MLflow's scoring server requires an input field,
  so a request sends the placeholder `[[[[0]]]]`.

Over HTTP both servers (`mlflow models serve` and `nfpipe deploy serve`) take one JSON form,
`{"inputs": <levels or the placeholder>, "params": {...}}`; the signature's input is any
4-D uint8 batch so that the placeholder passes MLflow's schema check, and the model checks a
scoring batch against its own image shape (the same 400 message from both servers).

Work is bounded per request: images x k <= `max_work` (and n <= `max_samples`). A request is
computed in units of at most `SLICE_IMAGES` images and one noise draw (`FlowScorer.plan`), so a
server can interleave the units of several requests; each run of `SLICE_IMAGES` images is scored
with its own noise stream seeded by `seed`, so the same images in the same order give the same
numbers whether they come in one request or in several of a multiple of `SLICE_IMAGES`.

Bad requests (shape, dtype, levels >= n_bins, too many images or samples, over the work budget)
raise `MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers
with 400.

MLflow executes the model's copies of `pyfunc_model.py`, this module and `flows` when it loads
the model; nfpipe's own load path (`deploy/load.py`) executes nothing from the artifact: it
reads the bundle's weights and config and builds a `FlowScorer` with the installed code.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
from collections.abc import Generator, Mapping
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
SLICE_IMAGES = 64  # image evaluations per unit of work: the grain of interleaving
# The shipped code's third-party imports, pinned to what is installed here (the model's
# requirements.txt); flows/viz.py (PIL) is not shipped: the model never draws grids.
REQUIREMENTS = ("mlflow-skinny", "torch", "safetensors", "pydantic", "numpy", "pandas")
# PyPI's Linux torch wheels pull in CUDA; this index holds the CPU builds of the same versions.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


class BadRequest(ValueError):
    """A request the model cannot serve; the message says what was expected."""


@dataclass(frozen=True)
class Limits:
    """What one `predict` call may ask for (stored as the pyfunc's `model_config`)."""

    max_batch: int = 1024
    max_samples: int = 256
    max_work: int = 8192  # images x k of one score request

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Limits:
        """Limits from the pyfunc's `model_config` (keys missing in older models: defaults)."""
        config = dict(config or {})
        return cls(**{name: int(config.get(name, getattr(cls, name)))
                      for name in ("max_batch", "max_samples", "max_work")})

    def as_config(self) -> dict[str, int]:
        return {"max_batch": self.max_batch, "max_samples": self.max_samples,
                "max_work": self.max_work}


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
    if not is_number(n, integer=True):
        raise BadRequest(f"'n' must be an integer number of samples, got {shown(n)}.")
    if not 1 <= int(n) <= max_samples:
        raise BadRequest(f"'n' must be between 1 and {max_samples} samples, got {shown(n)}.")
    if not is_number(temperature):
        raise BadRequest(f"'temperature' must be a number, got {shown(temperature)}.")
    try:
        t = float(temperature)
    except OverflowError:  # an integer too large for a float
        t = float("inf")
    if not 0.0 < t <= 10.0 or not np.isfinite(t):
        raise BadRequest(f"'temperature' must be in (0, 10], got {shown(temperature)}.")
    return int(n), t


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if not is_number(value, integer=True):
        raise BadRequest(f"'{name}' must be an integer, got {shown(value)}.")
    if not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {shown(value)}.")
    return int(value)


def is_number(value: Any, integer: bool = False) -> bool:
    """One rule for every numeric param: a JSON number, never a bool (`true` is not 1) nor a
    string; `integer` also refuses fractions."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def shown(value: Any, limit: int = 40) -> str:
    """`value` for an error message, cut short (a param may be a 4,000-digit integer)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {round(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_work(images: int, k: int, max_work: int) -> None:
    """The per-request budget: images x k forward passes at most."""
    if images * k > max_work:
        raise BadRequest(f"{images} images x k={k} = {images * k} image evaluations is over "
                         f"this model's budget of {max_work} per request; send fewer images "
                         "per request or a smaller k.")


Steps = Generator[None, None, np.ndarray]


def run_to_end(steps: Steps) -> np.ndarray:
    """Drive a `FlowScorer.plan` generator through all its units; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class FlowScorer:
    """A loaded `flows.DensityModel` behind the request forms (score or sample), in units.

    `plan(x, params)` validates a request at once (raising `BadRequest`) and returns a
    generator that computes one unit per `next()` (about `SLICE_IMAGES` image evaluations:
    images x k draws) and returns the result [B] float64 bits/dim or uint8 levels
    [n, C, H, W]. A server interleaves the units of several requests; `run_request` runs one
    request to the end. Each unit holds a lock: the forward passes share one model instance.
    """

    def __init__(self, model: Any, meta: Mapping[str, Any] | None = None,
                 limits: Limits = Limits()) -> None:
        self.model = model.eval()
        self.meta = dict(meta or {})
        self.limits = limits
        self._lock = threading.Lock()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.config.image_shape)

    @property
    def n_bins(self) -> int:
        return int(self.model.config.n_bins)

    def run_request(self, model_input: Any, params: Mapping[str, Any]) -> np.ndarray:
        """Validate and compute one request; raises `BadRequest` for bad requests."""
        return run_to_end(self.plan(model_input, params))

    def plan(self, model_input: Any, params: Mapping[str, Any]) -> Steps:
        """Validate a request now; return the generator of its units (see the class)."""
        mode = params.get("mode", "score") or "score"
        seed = _check_int("seed", params.get("seed", 0), 0, 2**63 - 1)
        if mode == "sample":
            n, temperature = check_sample_request(
                params.get("n", 16), params.get("temperature", 1.0), self.limits.max_samples
            )
            return self._sample_units(n, temperature, seed)
        if mode != "score":
            raise BadRequest(f"'mode' must be 'score' or 'sample', got {mode!r}.")
        k = _check_int("k", params.get("k", 1), 1, MAX_K)
        x = check_images(model_input, self.image_shape, self.n_bins, self.limits.max_batch)
        check_work(len(x), k, self.limits.max_work)
        return self._score_units(x, k, seed)

    def _score_units(self, x: np.ndarray, k: int, seed: int) -> Steps:
        """Per slice of max(1, SLICE_IMAGES // k) images: the k-draw bound, seeded by `seed`,
        so a slice's numbers equal `score_levels(model, slice, k=k, generator=seed)` and a
        unit is about SLICE_IMAGES image evaluations whatever k is."""
        width = max(1, SLICE_IMAGES // k)
        slices = []
        for start in range(0, len(x), width):
            with self._lock:
                slices.append(score_levels(self.model, x[start:start + width], k=k,
                                           generator=seed))
            yield
        return np.concatenate(slices)

    def _sample_units(self, n: int, temperature: float, seed: int) -> Steps:
        import torch

        generator = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, n, SLICE_IMAGES):
            with self._lock:
                parts.append(sample_levels(self.model, min(SLICE_IMAGES, n - start),
                                           temperature, generator=generator))
            yield
        return np.concatenate(parts)


def load_scorer(bundle: Path, limits: Limits = Limits()) -> FlowScorer:
    """A `FlowScorer` built from a bundle folder (config + safetensors) on CPU."""
    from flows.io import load_meta, load_model

    return FlowScorer(load_model(bundle, map_location="cpu"), load_meta(bundle), limits)


class FlowPyfunc(PythonModel):
    """`flows.DensityModel` as an MLflow pyfunc: score images (bits/dim) or draw samples.

    Rebuilt in `load_context` from the bundle artifacts (config + safetensors) as a
    `FlowScorer`, in eval mode on CPU; `predict` runs one request to the end.
    """

    def __init__(self) -> None:
        self.scorer: FlowScorer | None = None

    def load_context(self, context: Any) -> None:
        limits = Limits.from_config(context.model_config)
        self.scorer = load_scorer(Path(context.artifacts["bundle"]), limits)

    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Score (default) or sample; see the module docstring for the request forms.

        (`np.ndarray` is a hint MLflow takes as is: no conversion; the explicit signature,
        `signature_for`, describes the input.)
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.scorer.run_request(model_input, params or {})
        except BadRequest as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None


def signature_for():
    """Input: uint8 levels, any 4-D batch [-1, -1, -1, -1] (MLflow's server checks the shape
    before `predict`: a fixed [-1, C, H, W] would refuse a sample request's placeholder
    `[[[[0]]]]`; `check_images` checks a scoring batch against the image shape); params:
    mode, k, seed, n, temperature. The image shape is in the model's metadata."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))])
    params = ParamSchema([
        ParamSpec("mode", "string", "score"),
        ParamSpec("k", "long", 1),
        ParamSpec("seed", "long", 0),
        ParamSpec("n", "long", 16),
        ParamSpec("temperature", "double", 1.0),
    ])
    return ModelSignature(inputs=inputs, params=params)


def pip_requirements() -> list[str]:
    """The shipped code's imports, pinned to the versions installed here, CPU torch first.

    `torch==X` matches both PyPI's CUDA build and the CPU index's `X+cpu`; pip takes the
    higher `+cpu` where that index is reachable, so serving on CPU needs no CUDA wheels."""
    from importlib.metadata import version

    pins = [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in REQUIREMENTS]
    return [f"--extra-index-url {CPU_TORCH_INDEX}", *pins]


def bundle_sha256(directory: str | Path) -> str:
    """One digest of the bundle: sha256 over each file's name and sha256, in a fixed order."""
    import hashlib

    outer = hashlib.sha256()
    for name in BUNDLE_FILES:
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a model bundle: {name} is missing")
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                inner.update(chunk)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


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
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "viz.py"))
    package = into / "code" / "deploy"
    package.mkdir(parents=True)
    for name in ("__init__.py", "pyfunc.py"):
        shutil.copy2(Path(__file__).with_name(name), package / name)
    return [str(into / "code" / "flows"), str(package)]


def log_bundle(bundle_dir: str | Path, limits: Limits = Limits(), name: str = ARTIFACT_PATH,
               step: int = 0):
    """Log the bundle as a pyfunc model into the active MLflow run; returns its `ModelInfo`.

    `step` is the step (epoch) the weights come from: MLflow links the run's metrics at that
    step to the logged model, so the model carries the scores of these weights."""
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
            model_config=limits.as_config(),
            signature=signature_for(),
            input_example=example,
            pip_requirements=pip_requirements(),
            step=step,
            metadata={"image_shape": list(image_shape), "n_bins": int(config["n_bins"]),
                      "family": config["name"], "request_forms": REQUEST_FORMS},
        )


REQUEST_FORMS = {
    "score": "inputs: uint8 levels [B, C, H, W]; params {k, seed} -> bits/dim [B]",
    "sample": "params {mode: 'sample', n, temperature, seed} -> uint8 levels [n, C, H, W]; "
    "inputs ignored (send the placeholder [[[[0]]]])",
}
