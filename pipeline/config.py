"""Load pipeline.yaml: apply a profile and --set overrides, then validate into typed models.

Each part owns the model of its own section (see docs/contracts.md); this module composes them
and turns validation failures into `ConfigError`s that name the path, the offending key and the
closest valid key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_prep.config import DataPrepConfig
from data_prep.storage import Location
from deploy.config import DeployConfig, EvaluateConfig, PromoteConfig
from train.config import TrainConfig
from train.typed import model_type, suggest
from tune.config import TuneConfig

URL_SECRET = re.compile(r"://[^/@\s]*:[^/@\s]*@")
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
    artifact_root: Location = Field(
        "mlartifacts",
        description="Artifacts of a local SQLite store: a folder or a URL (s3://bucket/prefix); "
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


class PipelineConfig(_Section):
    name: str = Field("quickstart", description="Pipeline name; prefixes run and model names.")
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


def load_config(
    path: Path | None, profile: str | None = None, sets: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Read `path` (or the built-in defaults), apply `profile` and `a.b=value` overrides."""
    raw = _read_yaml(path) if path is not None else {}
    profiles = raw.pop("profiles", {}) or {}
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(
                f"unknown profile {profile!r}{suggest(profile, profiles)}; "
                f"profiles in {path}: {', '.join(sorted(profiles)) or '(none)'}"
            )
        raw = deep_merge(raw, profiles[profile] or {})
        raw["profile"] = profile
    for assignment in sets:
        raw = apply_set(raw, assignment)
    return validate(raw)


def validate(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


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
                given = URL_SECRET.sub("://***@", given)  # never echo a secret in a URL
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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def registered_model_name(cfg: PipelineConfig) -> str:
    """The registered model of a pipeline: `promote.model_name` or '{name}-{family}'."""
    return cfg.promote.model_name or f"{cfg.name}-{cfg.train.model.name}"
