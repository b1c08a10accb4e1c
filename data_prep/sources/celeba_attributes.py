"""CelebA's 40 binary attributes from the official `list_attr_celeba.txt` ("Anno" files).

Format: line 1 the number of images; line 2 the attribute names (whitespace-separated); then
one line per image, `NNNNNN.jpg v1 … vA`, each value -1 (absent) or 1 (present), separated by
one or more spaces. Every fault (a truncated file, a line with the wrong number of values, a
value other than -1/1, an image listed twice or not in the partition file, a count that does
not match) is a `DataPrepError` naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.errors import DataPrepError

ATTRIBUTES = "list_attr_celeba.txt"


@dataclass(frozen=True)
class AttributeTable:
    """Attribute names in file order and, per image file name, its flags bool [A]."""

    names: list[str]
    flags: dict[str, np.ndarray]
    lines: dict[str, int]  # image file name -> its line number (for messages)


def parse_attributes(location: str, text: str) -> AttributeTable:
    """The table in `text` (the content of `location`, named in errors)."""
    lines = text.splitlines()
    count = _count(location, lines)
    names = _names(location, lines)
    flags: dict[str, np.ndarray] = {}
    numbers: dict[str, int] = {}
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        name, values = _row(location, number, line, len(names))
        if name in flags:
            raise DataPrepError(f"{location}:{number}: {name} is listed twice")
        flags[name], numbers[name] = values, number
    if len(flags) != count:
        raise DataPrepError(
            f"{location}:1: says {count} images but the file lists {len(flags)} (last line "
            f"{len(lines)}); the file is truncated or edited: download Anno/{ATTRIBUTES} again")
    return AttributeTable(names, flags, numbers)


def _count(location: str, lines: list[str]) -> int:
    first = lines[0].strip() if lines else ""
    if not first.isdigit():
        raise DataPrepError(f"{location}:1: expected the number of images, got {first[:40]!r} "
                            f"(is this CelebA's {ATTRIBUTES}?)")
    return int(first)


def _names(location: str, lines: list[str]) -> list[str]:
    names = lines[1].split() if len(lines) > 1 else []
    if not names:
        raise DataPrepError(f"{location}:2: expected the attribute names, got "
                            f"{'nothing' if len(lines) < 2 else repr(lines[1][:40])}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataPrepError(f"{location}:2: attribute {repeated[0]!r} is named twice")
    return names


def _row(location: str, number: int, line: str, n: int) -> tuple[str, np.ndarray]:
    """(image file name, flags) of one line."""
    parts = line.split()
    if len(parts) != n + 1 or "/" in parts[0]:
        raise DataPrepError(f"{location}:{number}: expected '<image>.jpg' and {n} values -1 or 1,"
                            f" got {len(parts) - 1} values ({line.strip()[:60]!r})")
    values = parts[1:]
    bad = next((v for v in values if v not in ("-1", "1")), None)
    if bad is not None:
        raise DataPrepError(f"{location}:{number}: value {bad!r} for {parts[0]} is not -1 or 1")
    return parts[0], np.array([v == "1" for v in values], dtype=bool)


def check_covers(location: str, table: AttributeTable, images: list[str],
                 partition: str) -> None:
    """Every image of the partition file has attributes, and the table lists no other."""
    listed = set(images)
    unknown = next((name for name in table.flags if name not in listed), None)
    if unknown is not None:
        raise DataPrepError(f"{location}:{table.lines[unknown]}: {unknown} is not in "
                            f"{partition}; the two files must list the same images")
    missing = next((name for name in images if name not in table.flags), None)
    if missing is not None:
        raise DataPrepError(f"{location}: has no line for {missing} (listed in {partition}); "
                            f"download Anno/{ATTRIBUTES} again")
