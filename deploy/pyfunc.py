"""The registered model: an MLflow pyfunc `PythonModel` around a `flows` model bundle.

The model is logged "from code" (`deploy/pyfunc_model.py` is executed at load time), its
artifacts are the bundle files (safetensors weights, `model_config.json`, `meta.json`, and
`attributes.safetensors` where the evaluate stage computed attribute directions: no pickle),
and the `flows` package and this module (with the two it imports) travel with it as
`code_paths`, so any process with MLflow, torch, safetensors and pydantic can
`mlflow.pyfunc.load_model("models:/NAME@champion")`.

Request forms of `predict(model_input, params)` (and of `/invocations` on any server); levels
are uint8 [B, C, H, W] with values in [0, n_bins), checked against the model's image shape:

* score (default): `model_input` levels; params `{"k": 1, "seed": 0}` -> float64 [B],
  bits/dim per image: the importance-weighted bound over k draws (dequantisation noise, and
  latents for VAE / f-VAE), seeded, so the same request gives the same numbers.
* sample: params `{"mode": "sample", "n": 16, "temperature": 0.7, "seed": 0}` -> uint8 levels
  [n, C, H, W]; `model_input` is ignored, but MLflow's scoring server requires an input field,
  so a request sends the placeholder `[[[[0]]]]`.
* encode: `model_input` levels; params `{"mode": "encode"}` -> float32 latents [B, D], one flat
  row per image: the latents of every level (flows, D = C·H·W) or the posterior mean (VAE,
  f-VAE), flattened and concatenated in order (`deploy/latent_requests.py`), encoded from the
  bins' centres, so for a flow decode returns the levels exactly.
* decode: `model_input` latents [B, D] in encode's form (any numbers, finite in float32);
  params `{"mode": "decode"}` -> uint8 levels [B, C, H, W].
* interpolate (Glow, Fig. 5): `model_input` levels of two images [2, C, H, W]; params
  `{"mode": "interpolate", "steps": 8}` -> uint8 levels [steps + 2, C, H, W] from A to B, the
  ends equal to A and B (`flows.latents.interpolate`).
* manipulate (Glow, Fig. 6): `model_input` levels of one image [1, C, H, W]; params
  `{"mode": "manipulate", "attribute": "Smiling", "alphas": [-1, -0.5, 0, 0.5, 1]}` -> uint8
  levels [len(alphas), C, H, W], the image moved by alpha times the attribute's direction
  (`flows.attributes.manipulate`; alpha 0 is the image). Needs the model's directions
  (`FlowScorer.directions`); an unknown attribute is a 400 listing the known ones.

Over HTTP both servers (`mlflow models serve` and `nfpipe deploy serve`) take one JSON form,
`{"inputs": <levels, latents or the placeholder>, "params": {...}}`, and answer
`{"predictions": ...}`: an encode answer's predictions are a decode request's inputs. The
signature lists the params and declares no input schema (`signature_for`): the model checks
every input itself, with the same 400 message from both servers.

Work is bounded per request: images x k <= `max_work` for a score; images encoded plus frames
decoded <= `max_work` for the latent modes; frames out (n, steps + 2, len(alphas)) <=
`max_samples`; images in <= `max_batch`. A request is computed in units of at most
`SLICE_IMAGES` images and one noise draw (`FlowScorer.plan`), so a server can interleave the
units of several requests; each run of `SLICE_IMAGES` images is scored with its own noise
stream seeded by `seed`, so the same images in the same order give the same numbers whether
they come in one request or in several of a multiple of `SLICE_IMAGES`.

Bad requests (shape, dtype, levels >= n_bins, latents of the wrong size or not finite, too many
images, samples or frames, over the work budget, a missing or unknown attribute, alphas that
are not a list of numbers) raise `MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's
scoring server answers with 400; the checks are in `deploy/request_checks.py`.

MLflow executes the model's copies of `pyfunc_model.py`, this module and `flows` when it loads
the model; nfpipe's own load path (`deploy/load.py`) executes nothing from the artifact: it
reads the bundle's weights and config and builds a `FlowScorer` with the installed code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.pyfunc import PythonModel

from deploy.latent_requests import (
    DEFAULT_ALPHAS,
    DEFAULT_STEPS,
    LATENT_MODES,
    check_directions,
    plan_latent,
)
from deploy.request_checks import (
    SLICE_IMAGES,
    BadRequest,
    check_images,
    check_int,
    check_sample_request,
    check_work,
    shown,
)
from flows.attributes import DIRECTIONS_FILE
from flows.latents import latent_shapes
from flows.scoring import sample_levels, score_levels

if TYPE_CHECKING:
    from flows.attributes import Directions

BUNDLE_FILES = ("model.safetensors", "model_config.json", "meta.json")
# Files a bundle may hold beside those: the attribute directions the evaluate stage computes.
# Bundles registered without them load as before (`FlowScorer.directions` None), and their
# digest is what it was: a file absent from the bundle is not part of `bundle_sha256`.
OPTIONAL_FILES = (DIRECTIONS_FILE,)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT_PATH = "model"  # name of the logged model inside its run
MAX_K = 1000  # importance-weighted draws per image in one request
MODES = ("score", "sample", *LATENT_MODES)
# The shipped code's third-party imports, pinned to what is installed here (the model's
# requirements.txt); flows/viz.py (PIL) is not shipped: the model never draws grids.
REQUIREMENTS = ("mlflow-skinny", "torch", "safetensors", "pydantic", "numpy", "pandas")
# PyPI's Linux torch wheels pull in CUDA; this index holds the CPU builds of the same versions.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


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


Steps = Generator[None, None, np.ndarray]


def run_to_end(steps: Steps) -> np.ndarray:
    """Drive a `FlowScorer.plan` generator through all its units; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class FlowScorer:
    """A loaded `flows.DensityModel` behind the request forms (`MODES`, module doc), in units.

    `plan(x, params)` validates a request at once (raising `BadRequest`) and returns a
    generator that computes one unit per `next()` (about `SLICE_IMAGES` image evaluations:
    images x k draws, or images encoded / frames decoded) and returns the result: [B] float64
    bits/dim, float32 latents [B, D] or uint8 levels. A server interleaves the units of several
    requests; `run_request` runs one request to the end. Each unit holds `lock`: the forward
    passes share one model instance. `directions` (attribute directions, `flows.attributes`)
    serve the manipulate mode; None where the model has none.
    """

    def __init__(self, model: Any, meta: Mapping[str, Any] | None = None,
                 limits: Limits = Limits(), directions: Directions | None = None) -> None:
        self.model = model.eval()
        self.meta = dict(meta or {})
        self.limits = limits
        self.directions = directions
        self.lock = threading.Lock()
        # {name: shape} of one image's latents, found once: for VAE / f-VAE it takes a forward
        # pass, which must not run beside a unit's outside the lock
        self.latent_shapes = latent_shapes(self.model)
        if directions is not None:
            check_directions(directions, self.latent_shapes)

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
        seed = check_int("seed", params.get("seed", 0), 0, 2**63 - 1)
        if mode == "sample":
            n, temperature = check_sample_request(
                params.get("n", 16), params.get("temperature", 1.0), self.limits.max_samples
            )
            return self._sample_units(n, temperature, seed)
        if mode in LATENT_MODES:
            return plan_latent(self, mode, model_input, params)
        if mode != "score":
            raise BadRequest(f"'mode' must be one of {', '.join(MODES)}; got {shown(mode)}.")
        k = check_int("k", params.get("k", 1), 1, MAX_K)
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
            with self.lock:
                slices.append(score_levels(self.model, x[start:start + width], k=k,
                                           generator=seed))
            yield
        return np.concatenate(slices)

    def _sample_units(self, n: int, temperature: float, seed: int) -> Steps:
        import torch

        generator = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, n, SLICE_IMAGES):
            with self.lock:
                parts.append(sample_levels(self.model, min(SLICE_IMAGES, n - start),
                                           temperature, generator=generator))
            yield
        return np.concatenate(parts)


def load_scorer(bundle: Path, limits: Limits = Limits()) -> FlowScorer:
    """A `FlowScorer` built from a bundle folder (config + safetensors) on CPU, with the
    attribute directions when the bundle holds them."""
    from flows.attributes import load_directions
    from flows.io import load_meta, load_model

    path = Path(bundle) / DIRECTIONS_FILE
    directions = load_directions(path) if path.is_file() else None
    return FlowScorer(load_model(bundle, map_location="cpu"), load_meta(bundle), limits,
                      directions)


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
        """One request of any mode (score by default); the module docstring has the forms.

        (`np.ndarray` is a hint MLflow takes as is: no conversion; the explicit signature,
        `signature_for`, describes the input.)
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.scorer.run_request(model_input, params or {})
        except BadRequest as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None


def signature_for():
    """Params only: mode, k, seed, n, temperature, steps, attribute, alphas (a list of
    numbers), with the defaults `FlowScorer.plan` applies. No input schema: the inputs are
    uint8 levels [B, C, H, W] for most modes but float latents [B, D] for decode, which no
    one MLflow tensor spec covers (and a uint8 spec would make MLflow's server cast latents,
    or float levels, to uint8 silently); the model checks every input itself, with the same
    400 from both servers. The image shape is in the model's metadata."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    params = ParamSchema([
        ParamSpec("mode", "string", "score"),
        ParamSpec("k", "long", 1),
        ParamSpec("seed", "long", 0),
        ParamSpec("n", "long", 16),
        ParamSpec("temperature", "double", 1.0),
        ParamSpec("steps", "long", DEFAULT_STEPS),
        ParamSpec("attribute", "string", ""),
        ParamSpec("alphas", "double", list(DEFAULT_ALPHAS), shape=(-1,)),
    ])
    return ModelSignature(inputs=None, params=params)


def pip_requirements() -> list[str]:
    """The shipped code's imports, pinned to the versions installed here, CPU torch first.

    `torch==X` matches both PyPI's CUDA build and the CPU index's `X+cpu`; pip takes the
    higher `+cpu` where that index is reachable, so serving on CPU needs no CUDA wheels."""
    from importlib.metadata import version

    pins = [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in REQUIREMENTS]
    return [f"--extra-index-url {CPU_TORCH_INDEX}", *pins]


def bundle_files(directory: str | Path) -> tuple[str, ...]:
    """The files of a bundle folder: the required three, then the optional ones it holds."""
    for name in BUNDLE_FILES:
        if not (Path(directory) / name).is_file():
            raise FileNotFoundError(f"{directory} is not a model bundle: {name} is missing")
    return BUNDLE_FILES + tuple(n for n in OPTIONAL_FILES if (Path(directory) / n).is_file())


def bundle_sha256(directory: str | Path) -> str:
    """One digest of the bundle: sha256 over each file's name and sha256, in a fixed order
    (`bundle_files`: an optional file counts only where present)."""
    import hashlib

    outer = hashlib.sha256()
    for name in bundle_files(directory):
        path = Path(directory) / name
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                inner.update(chunk)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def stage_bundle(bundle_dir: Path, into: Path) -> Path:
    """Copy the bundle files (only those, `bundle_files`) to `into/bundle` for logging."""
    target = into / "bundle"
    target.mkdir(parents=True)
    for name in bundle_files(bundle_dir):
        shutil.copy2(Path(bundle_dir) / name, target / name)
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
    for name in ("__init__.py", "pyfunc.py", "request_checks.py", "latent_requests.py"):
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
    "encode": "inputs: uint8 levels [B, C, H, W]; params {mode: 'encode'} -> float32 latents "
    "[B, D] (the levels' latents flattened and concatenated in order)",
    "decode": "inputs: latents [B, D] as encode returns them; params {mode: 'decode'} -> "
    "uint8 levels [B, C, H, W]",
    "interpolate": "inputs: uint8 levels [2, C, H, W] (A, B); params {mode: 'interpolate', "
    "steps} -> uint8 levels [steps + 2, C, H, W], A to B",
    "manipulate": "inputs: uint8 levels [1, C, H, W]; params {mode: 'manipulate', attribute, "
    "alphas: [numbers]} -> uint8 levels [len(alphas), C, H, W]",
}
