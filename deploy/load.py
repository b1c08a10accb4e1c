"""Pull a registered model for sampling, scoring and serving, with the version it resolved to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tracking
from deploy.registry import champion_version


class NotAnNfpipeModel(ValueError):
    """The model URI points at a model that is not an nfpipe density model."""


def model_uri(spec: str | None, default_name: str, alias: str) -> str:
    """`NAME@ALIAS`, `NAME/VERSION`, `NAME` or a URI -> an MLflow model URI."""
    spec = spec or default_name
    if "://" in spec or spec.startswith(("models:/", "runs:/")) or Path(spec).exists():
        return spec
    if "@" in spec or "/" in spec:
        return f"models:/{spec}"
    return f"models:/{spec}@{alias}"


def load_served(uri: str) -> tuple[Any, dict[str, Any]]:
    """(FlowPyfunc, info) for a model URI; info names the version an alias resolved to."""
    import mlflow

    from deploy.pyfunc import FlowPyfunc

    pyfunc = mlflow.pyfunc.load_model(uri)
    model = pyfunc.unwrap_python_model()
    if not isinstance(model, FlowPyfunc) and type(model).__name__ != "FlowPyfunc":
        raise NotAnNfpipeModel(f"{uri} is not an nfpipe model (its pyfunc is "
                               f"{type(model).__name__})")
    info = {"model_uri": uri, "version": resolved_version(uri),
            "run_id": model.meta.get("run_id"), "dataset": model.meta.get("dataset")}
    return model, info


def resolved_version(uri: str) -> str | None:
    """The version number behind `models:/NAME@ALIAS` or `models:/NAME/VERSION`, else None."""
    if not uri.startswith("models:/"):
        return None
    ref = uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        holder = champion_version(tracking.client(), name, alias)
        return str(holder.version) if holder else None
    return ref.split("/", 1)[1] if "/" in ref else None
