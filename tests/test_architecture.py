"""Dependencies between the top-level packages point one way (docs/architecture.md).

The test parses every module's imports (without importing it, so imports inside functions
count too) and fails on an arrow against the layer order, or on a module outside the command
line importing a command-line module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the project packages it may import (besides itself); arrows point down only
ALLOWED: dict[str, set[str]] = {
    "flows": set(),
    "data_prep": set(),
    "tracking": set(),
    "train": {"flows", "data_prep", "tracking"},
    "tune": {"train", "flows", "data_prep", "tracking"},
    "deploy": {"flows", "data_prep", "tracking"},
    "pipeline": {"tune", "deploy", "train", "flows", "data_prep", "tracking"},
}
CLI = "pipeline.cli"  # the one command line: nothing outside it imports it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str) -> set[str]:
    """Absolute names of every module imported anywhere in `source` (`from a import b` gives
    `a` and `a.b`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(module: str, source: str) -> list[str]:
    """Imports of `module` against the layer order, and imports of the CLI from outside it."""
    package = module.split(".")[0]
    in_cli = module == CLI or module.startswith(CLI + ".")
    found = []
    for name in sorted(imported_modules(source)):
        target = name.split(".")[0]
        if target in ALLOWED and target != package and target not in ALLOWED[package]:
            allowed = ", ".join(sorted(ALLOWED[package])) or "no other project package"
            found.append(f"{module} imports {name}, but {package} may import {allowed}")
        if (name == CLI or name.startswith(CLI + ".")) and not in_cli:
            found.append(f"{module} imports the command-line module {name}")
    return found


def project_modules() -> list[Path]:
    return sorted(path for package in ALLOWED for path in (REPO / package).rglob("*.py"))


def test_every_top_level_package_has_a_layer():
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("path", project_modules(), ids=module_name)
def test_imports_point_down_the_layers(path):
    assert violations(module_name(path), path.read_text()) == []


def test_an_upward_import_is_caught():
    """The check above can fail: an upward import and a CLI import, planted on purpose."""
    source = "def f():\n    from pipeline.config import PipelineConfig\n"
    assert violations("flows.models.glow", source) == [
        "flows.models.glow imports pipeline.config, but flows may import no other project "
        "package",
        "flows.models.glow imports pipeline.config.PipelineConfig, but flows may import no "
        "other project package",
    ]
    assert violations("tune.sweep", "import train.loop\nfrom pipeline.cli import main\n") == [
        "tune.sweep imports pipeline.cli, but tune may import data_prep, flows, tracking, train",
        "tune.sweep imports the command-line module pipeline.cli",
        "tune.sweep imports pipeline.cli.main, but tune may import data_prep, flows, tracking, "
        "train",
        "tune.sweep imports the command-line module pipeline.cli.main",
    ]
    assert violations("pipeline.stages.deploy", "from pipeline.cli.models import x\n") != []
    assert violations("pipeline.cli.run", "from pipeline.cli.args import x\n") == []
