"""Helpers over the typed config models, for this package and the layers above it (tune's
search space, the pipeline's config errors and reference)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
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


def settle_alternatives(before: dict[str, Any], after: dict[str, Any],
                        pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`after` (a layer of settings applied to `before`: a profile, a --set, a trial's
    overrides) without the settings it replaced: where it set one of a pair of alternatives
    (dotted paths, e.g. `optim.warmup_steps` and `optim.warmup_images`) and left the other as
    it was, that other one is cleared. A layer that sets both keeps both, and validation says
    to give one."""
    for pair in pairs:
        for given, other in (pair, pair[::-1]):
            changed = _get(after, given) != _get(before, given)
            if changed and _get(after, given) is not None and \
                    _get(after, other) == _get(before, other):
                _clear(after, other)
    return after


def _get(raw: Any, path: str) -> Any:
    for part in path.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _clear(raw: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        raw = raw.get(part)
        if not isinstance(raw, dict):
            return
    if leaf in raw:
        raw[leaf] = None
