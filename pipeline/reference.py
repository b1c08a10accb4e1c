"""The pipeline.yaml reference, generated from the config models so it cannot drift."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from data_prep.storage import Location, check_scheme
from train.typed import model_type


def config_reference(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    rows.extend(_rows(model, prefix=""))
    return "\n".join(rows) + "\n"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = model_type(field.annotation)
        if nested is not None and get_origin(field.annotation) not in (dict, Mapping):
            rows.extend(_rows(nested, prefix=f"{path}."))
            continue
        default = _default(field.get_default(call_default_factory=True))
        description = (field.description or "").replace("|", "/")
        kind = _type_name(field.annotation)
        if any(getattr(m, "func", None) is check_scheme for m in field.metadata):
            kind = "path or URL"  # pydantic moved Location's validator into the metadata
        rows.append(f"| `{path}` | {kind} | {default} | {description} |")
    return rows


def _type_name(annotation: Any) -> str:
    if annotation == Location:
        return "path or URL"
    if annotation == Location | None:
        return "path or URL / None"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("|", "/")


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "…"
    return f"`{json.dumps(to_jsonable_python(value))}`".replace("|", "/")


START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def with_reference(readme: str, table: str) -> str:
    """`readme` with the text between the reference markers replaced by `table`."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}{END}{tail}"
