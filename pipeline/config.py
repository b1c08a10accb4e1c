"""Load pipeline.yaml: apply a profile and --set overrides, then validate into typed models.

Each part owns the model of its own section (see docs/contracts.md); this module composes them
and turns validation failures into `ConfigError`s that name the path, the offending key and the
closest valid key.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from data_prep.config import DataPrepConfig
from data_prep.storage import Location
from deploy.config import DeployConfig, PromoteConfig
from tracking.store import mask_url_credentials
from train.config import OPTIM_ALTERNATIVES, TrainConfig
from train.evaluate_config import EvaluateConfig
from train.typed import model_type, settle_alternatives, suggest
from tune.config import WARMUPS, TuneConfig

# one name for a Ray run folder, an MLflow run and model, and a file: no path, no quote
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# pairs of settings that say one thing in two units: a layer that gives one replaces the other
ALTERNATIVES: tuple[tuple[str, str], ...] = (
    *((f"train.optim.{steps}", f"train.optim.{images}") for steps, images in OPTIM_ALTERNATIVES),
    tuple(f"tune.{name}" for name in WARMUPS),
)
StageName = Literal["data_prep", "train", "tune", "evaluate", "promote", "deploy"]
ALL_STAGES: tuple[str, ...] = get_args(StageName)


class ConfigError(Exception):
    """A user error in the configuration: printed without a traceback, exit code 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowConfig(_Section):
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking URI: a local SQLite file (default) or http://HOST:PORT of "
        "an `mlflow server` (required on multi-node clusters).",
    )
    experiment: str = Field("nfpipe", description="MLflow experiment that holds the runs.")

    @field_validator("tracking_uri")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return not_blank(value)
    artifact_root: Location = Field(
        "mlartifacts",
        description="Artifacts of a local SQLite store: a folder or a URL (s3://bucket/prefix, "
        "gs://bucket/prefix); "
        "ignored for an http:// server, which has its own (`--artifacts-destination`).",
    )


class RayConfig(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto', ray://…); empty starts a local Ray."
    )
    num_cpus: int | None = Field(
        None, gt=0, description="CPUs of a local Ray (default: all of this machine's)."
    )
    dashboard: bool = Field(
        True,
        description="Start the Ray dashboard with a local Ray (http://127.0.0.1:8265; Ray "
        "Train's state API needs it).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Log level of Ray's own loggers in the driver and workers."
    )


def not_blank(value: Any) -> Any:
    """A setting that names a place may not be empty (an empty workdir is the current
    directory)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("may not be empty")
    return value


class PipelineConfig(_Section):
    name: str = Field(
        "quickstart",
        description="Pipeline name; prefixes run and model names. 1-64 letters, digits, '.', "
        "'_' or '-', starting with a letter or digit (it names Ray run folders, MLflow runs "
        "and models).",
    )
    profile: str | None = Field(None, description="The profile applied (set by --profile).")
    workdir: Path = Field(
        Path(".nfpipe"), description="Run directory: stage records and stage outputs."
    )
    stages: tuple[StageName, ...] = Field(
        ALL_STAGES, description="Stages `nfpipe run` runs by default, in dependency order."
    )
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()
    data_prep: DataPrepConfig = DataPrepConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    deploy: DeployConfig = DeployConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value) or ".." in value:
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit, without '..' (it names Ray run folders, MLflow "
                             "runs and models)")
        return value

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir_not_blank(cls, value: Any) -> Any:
        return not_blank(value)


def load_config(
    path: Path | None, profile: str | None = None, sets: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Read `path` (or the built-in defaults), apply `profile` and `a.b=value` overrides."""
    raw = _read_yaml(path) if path is not None else {}
    profiles = _profiles(raw.pop("profiles", {}) or {}, path)
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(
                f"unknown profile {profile!r}{suggest(profile, profiles)}; "
                f"profiles in {path}: {', '.join(sorted(profiles)) or '(none)'}"
            )
        raw = settle_alternatives(raw, deep_merge(raw, profiles[profile] or {}), ALTERNATIVES)
        raw["profile"] = profile
    for assignment in sets:
        raw = settle_alternatives(raw, apply_set(raw, assignment), ALTERNATIVES)
    return validate(raw)


def _profiles(profiles: Any, path: Path | None) -> dict[str, Any]:
    """`profiles:` of `path`: a mapping of names to mappings (or empty profiles)."""
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profiles: expected a mapping of profile names to "
                          f"settings, got {type(profiles).__name__}")
    for name, overrides in profiles.items():
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{path}: profiles.{name}: expected a mapping of settings, got "
                              f"{type(overrides).__name__}")
    return profiles


def validate(raw: dict[str, Any]) -> PipelineConfig:
    """The typed config of `raw`; ConfigError naming each bad key.

    Numbers are strict about booleans: pydantic would read `epochs: true` as 1, so a boolean
    where the schema wants no boolean is an error (YAML's `1e-3` is a string and stays
    accepted as a number). Every float of every section must be finite (`.nan`, `.inf`, "inf"),
    checked here once over the validated config rather than in each part's models."""
    booleans = boolean_problems(PipelineConfig, raw)
    if booleans:
        raise ConfigError(_problems(booleans))
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    non_finite = non_finite_problems(cfg)
    if non_finite:
        raise ConfigError(_problems(non_finite))
    return cfg


def _problems(lines: list[str]) -> str:
    return "\n".join([f"invalid configuration ({len(lines)} problem(s)):", *lines])


def non_finite_problems(value: Any, loc: tuple[str, ...] = ()) -> list[str]:
    """'  path: Input should be a finite number (got nan)' for every NaN or infinity in a
    validated config: its models' fields, and the lists, tuples and dicts they hold."""
    if isinstance(value, BaseModel):
        items = [(name, getattr(value, name)) for name in type(value).model_fields]
    elif isinstance(value, dict):
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(str(i), item) for i, item in enumerate(value)]
    elif isinstance(value, float) and not math.isfinite(value):
        return [f"  {'.'.join(loc)}: Input should be a finite number (got {value!r})"]
    else:
        return []
    return [line for key, item in items for line in non_finite_problems(item, (*loc, key))]


def boolean_problems(model: type[BaseModel], raw: Any, loc: tuple[str, ...] = ()) -> list[str]:
    """'  path: expected a number, got a boolean (true)' for every boolean in `raw` whose
    field's type admits no boolean (dict-valued fields such as `tune.space` are free-form)."""
    if not isinstance(raw, dict):
        return []
    problems = []
    for key, value in raw.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        path = (*loc, key)
        nested = model_type(field.annotation)
        if nested is not None and isinstance(value, dict):
            problems += boolean_problems(nested, value, path)
            continue
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, bool) for v in values) and bool not in _scalar_types(
                field.annotation):
            got = str(next(v for v in values if isinstance(v, bool))).lower()
            expected = _expected(field.annotation)
            lines = f"  {'.'.join(path)}: expected {expected}, got a boolean ({got})"
            problems.append(lines)
    return problems


def _scalar_types(annotation: Any) -> set[Any]:
    """The scalar types an annotation admits: `int | None` -> {int, NoneType}; Literal values'
    types; the element types of tuples and lists; Any and dicts admit everything (object)."""
    if annotation is Any or annotation is bool:
        return {bool}
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(value) for value in get_args(annotation)}
    if origin is dict or annotation is dict:
        return {bool}
    if origin is not None:
        return {t for arg in get_args(annotation) if arg is not Ellipsis
                for t in _scalar_types(arg)}
    return {annotation}


def _expected(annotation: Any) -> str:
    types = _scalar_types(annotation)
    if types & {int, float}:
        return "an integer" if float not in types else "a number"
    return "a " + " or ".join(sorted(getattr(t, "__name__", str(t)) for t in types
                                     if t is not type(None)))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in (dicts recursively, everything else replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_set(raw: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `--set a.b.c=value` (the value is parsed as YAML: numbers, lists, null…)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {assignment!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse {text!r}: {err}") from None
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return deep_merge(raw, nested)


def format_validation_error(err: ValidationError) -> str:
    lines = [f"invalid configuration ({err.error_count()} problem(s)):"]
    for problem in err.errors():
        loc = tuple(problem["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            valid = _field_names_at(PipelineConfig, loc[:-1])
            hint = suggest(str(loc[-1]), valid)
            lines.append(f"  {path}: unknown key {loc[-1]!r}{hint}")
        else:
            given = problem.get("input")
            if isinstance(given, str):
                given = mask_url_credentials(given)  # never echo a secret in a URL
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {path}: {problem['msg']}{shown}")
    return "\n".join(lines)


def _field_names_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, or [] where the path leaves the models."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = model_type(fields[part].annotation)
    return list(getattr(current, "model_fields", {}))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{path} is empty: write at least one setting (e.g. `name: "
                          "quickstart`), or leave the file out to run the built-in defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def registered_model_name(cfg: PipelineConfig) -> str:
    """The registered model of a pipeline: `promote.model_name` or '{name}-{family}'."""
    return cfg.promote.model_name or f"{cfg.name}-{cfg.train.model.name}"
