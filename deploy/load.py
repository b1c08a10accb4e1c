"""Pull a registered model for sampling, scoring and serving: its weights and config, no code.

MLflow's own loader executes a models-from-code pyfunc's Python file, so anyone who can write
to the registry could run code wherever a champion is loaded. nfpipe's load path never lets
MLflow load the model: it reads the MLmodel file (YAML, `safe_load`) for the bundle's folder and
the request limits, downloads the bundle's three files (`model.safetensors`,
`model_config.json`, `meta.json`) and, where the model has them, its attribute directions
(`attributes.safetensors`), and nothing else, checks them against the version's
`nfpipe.bundle_sha256` tag (recorded at registration), and builds the model from the installed
`flows` (`deploy.pyfunc.load_scorer`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import tracking
from deploy.pyfunc import (
    BUNDLE_FILES,
    OPTIONAL_FILES,
    FlowScorer,
    Limits,
    bundle_sha256,
    load_scorer,
)
from deploy.registry import BUNDLE_TAG, champion_version

MLMODEL = "MLmodel"


class NotAnNfpipeModel(ValueError):
    """The model URI points at something that is not an nfpipe model bundle."""


class BundleMismatch(ValueError):
    """The bundle's files differ from the digest recorded when the version was registered."""


@dataclass(frozen=True)
class Located:
    """Where a model's files are: an artifact URI or a local folder, and its registry version."""

    root: str
    local: bool
    version: Any = None  # the registry's ModelVersion, when the URI names one


def model_uri(spec: str | None, default_name: str, alias: str) -> str:
    """`NAME@ALIAS`, `NAME/VERSION`, `NAME` or a URI -> an MLflow model URI."""
    spec = spec or default_name
    if "://" in spec or spec.startswith(("models:/", "runs:/")) or Path(spec).exists():
        return spec
    if "@" in spec or "/" in spec:
        return f"models:/{spec}"
    return f"models:/{spec}@{alias}"


def load_served(uri: str) -> tuple[FlowScorer, dict[str, Any]]:
    """(FlowScorer, info) for a model URI or folder, built from weights and config only.

    info: model_uri, version (what an alias resolved to), run_id, dataset, bundle_sha256, and
    verified (False where no registry version holds a digest to check against)."""
    located = locate(uri)
    with tempfile.TemporaryDirectory(prefix="nfpipe-load-") as tmp:
        bundle, limits = fetch_bundle(located, Path(tmp))
        digest = bundle_sha256(bundle)
        verified = check_digest(uri, located.version, digest)
        scorer = load_scorer(bundle, limits)
    version = located.version
    info = {"model_uri": uri, "version": str(version.version) if version else None,
            "run_id": (version.run_id if version else None) or scorer.meta.get("run_id"),
            "dataset": scorer.meta.get("dataset"), "bundle_sha256": digest,
            "verified": verified}
    return scorer, info


def locate(uri: str) -> Located:
    """The folder or artifact URI holding the model's MLmodel file (or a bare bundle)."""
    if Path(uri).exists():
        return Located(str(Path(uri).resolve()), local=True)
    if uri.startswith("models:/"):
        return _locate_registered(uri[len("models:/"):])
    return Located(uri.rstrip("/"), local=False)


def _locate_registered(ref: str) -> Located:
    client = tracking.client()
    if ref.startswith("m-") and "/" not in ref and "@" not in ref:  # a logged model's id
        return Located(client.get_logged_model(ref).artifact_location, local=False)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = champion_version(client, name, alias)
        if version is None:
            from mlflow.exceptions import MlflowException

            raise MlflowException(f"models:/{ref}: no registered model {name!r} with alias "
                                  f"{alias!r} (see `nfpipe models list`)",
                                  error_code="RESOURCE_DOES_NOT_EXIST")
    elif "/" in ref:
        name, number = ref.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise NotAnNfpipeModel(f"models:/{ref}: expected models:/NAME@ALIAS or "
                               "models:/NAME/VERSION")
    root = client.get_model_version_download_uri(version.name, version.version)
    return Located(root.rstrip("/"), local=False, version=version)


def fetch_bundle(located: Located, into: Path) -> tuple[Path, Limits]:
    """The bundle's files (copied to `into` unless local) and the model's limits: the three
    it must have and the optional ones it has (a file the model lost is caught by the digest
    check, which covers every file registered)."""
    if located.local and all((Path(located.root) / f).is_file() for f in BUNDLE_FILES):
        return Path(located.root), Limits()  # a bare bundle folder
    mlmodel = _read_mlmodel(located, into)
    bundle_path, limits = bundle_entry(mlmodel, located.root)
    if located.local:
        bundle = Path(located.root) / bundle_path
        missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
        if missing:
            raise NotAnNfpipeModel(f"{located.root}: no nfpipe bundle ({bundle_path}/"
                                   f"{missing[0]} is missing)")
        return bundle, limits
    import mlflow

    target = into / "bundle"
    target.mkdir()
    for name in BUNDLE_FILES:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{located.root}/{bundle_path}/{name}", dst_path=str(target))
    listed = {PurePosixPath(f.path).name for f in mlflow.artifacts.list_artifacts(
        artifact_uri=f"{located.root}/{bundle_path}")}
    for name in OPTIONAL_FILES:
        if name in listed:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{located.root}/{bundle_path}/{name}", dst_path=str(target))
    return target, limits


def _read_mlmodel(located: Located, into: Path) -> dict[str, Any]:
    import yaml

    if located.local:
        path = Path(located.root) / MLMODEL
        if not path.is_file():
            raise NotAnNfpipeModel(f"{located.root}: neither a model bundle "
                                   f"({', '.join(BUNDLE_FILES)}) nor an MLflow model ({MLMODEL})")
    else:
        import mlflow

        path = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{located.root}/{MLMODEL}", dst_path=str(into)))
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise NotAnNfpipeModel(f"{located.root}: its {MLMODEL} file is not a YAML mapping")
    return loaded


def bundle_entry(mlmodel: dict[str, Any], where: str) -> tuple[str, Limits]:
    """(the bundle's folder inside the model, its limits) from a parsed MLmodel file."""
    pyfunc = (mlmodel.get("flavors") or {}).get("python_function") or {}
    entry = (pyfunc.get("artifacts") or {}).get("bundle") or {}
    relative = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(relative, str):
        raise NotAnNfpipeModel(f"{where} is not an nfpipe model: its {MLMODEL} names no "
                               "'bundle' artifact (model.safetensors + model_config.json)")
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or ".." in parts or not parts:
        raise NotAnNfpipeModel(f"{where}: bundle path {relative!r} is not inside the model")
    try:
        limits = Limits.from_config(pyfunc.get("config"))
    except (TypeError, ValueError) as err:
        raise NotAnNfpipeModel(f"{where}: bad request limits in {MLMODEL}: {err}") from None
    return relative, limits


def check_digest(uri: str, version: Any, digest: str) -> bool:
    """Compare with the version's recorded digest; False when there is none to compare with."""
    if version is None:
        return False
    recorded = (version.tags or {}).get(BUNDLE_TAG)
    if not recorded:
        raise BundleMismatch(
            f"{uri} (v{version.version}) has no {BUNDLE_TAG} tag, so its weights cannot be "
            "checked; register it again with `nfpipe run --stages promote`")
    if recorded != digest:
        raise BundleMismatch(
            f"{uri} (v{version.version}): the bundle's sha256 {digest[:16]}… differs from "
            f"the {recorded[:16]}… recorded at registration; its files were changed")
    return True
