"""Helpers over the typed config models, for this package and the layers above it (tune's
search space, the pipeline's config errors and reference)."""

from __future__ import annotations

import difflib
from typing import Any, get_args, get_origin

from pydantic import BaseModel


def model_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (`M`, `M | None`, …), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) else ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def suggest(word: str, candidates: Any) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
