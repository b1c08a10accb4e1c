"""What a person wants to know after a run: the test bpd, the champion, the samples, the
MLflow UI and how to serve, each said only when true and with commands that work as typed."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.records import read_record
from tracking import absolute_tracking_uri, mask_url_credentials, sqlite_folder

# console script -> `python -m` module that runs the same command
_MODULES = {"nfpipe": "pipeline.cli", "mlflow": "mlflow"}


def next_steps(cfg: PipelineConfig, ran: set[str]) -> list[tuple[str, str]]:
    """(label, text) lines from the stage records; `ran`: the stages this invocation ran."""
    workdir = Path(cfg.workdir).resolve()
    lines: list[tuple[str, str]] = []
    evaluate = _ok_outputs(workdir, "evaluate")
    if evaluate:
        lines.append(("test bits/dim", test_bpd_text(evaluate)))
    promote = _ok_outputs(workdir, "promote")
    champion = promote.get("champion_version") if promote else None
    if promote and "promote" in ran:
        verdict = "became champion" if promote.get("promoted") else "kept the champion"
        lines.append(("this run", f"registered {promote['model_name']} v{promote['version']} "
                                  f"({verdict})"))
    if champion is not None:
        lines.append(("champion", f"models:/{promote['model_name']}@champion (v{champion})"))
    deploy = _ok_outputs(workdir, "deploy")
    grid = deploy.get("sample_grid") if deploy else None
    if grid and Path(grid).exists():
        lines.append(("samples", grid))
    ui = _mlflow_ui(cfg.mlflow.tracking_uri)
    if ui:
        lines.append(("MLflow UI", ui))
    if champion is not None:
        serve = f"{tool_command('nfpipe')} deploy serve --model {promote['model_name']}@champion"
        lines.append(("serve it", serve))
    return lines


def test_bpd_text(evaluate: dict) -> str:
    """The chosen model's test figure (k = 1), scored once, and the val figure it was chosen
    on (records of older runs have none)."""
    chosen = ""
    if "val_bpd" in evaluate:
        chosen = f"; {evaluate.get('source', 'the')} model chosen on val {evaluate['val_bpd']:.4f}"
    return f"{evaluate['test_bpd']:.4f} (k=1{chosen})"


def print_next_steps(cfg: PipelineConfig, console: Console, outcomes: Sequence = ()) -> None:
    """The "next" block, printed last; `outcomes`: what this invocation did per stage."""
    ran = {o.stage for o in outcomes if o.status == "ran"}
    lines = next_steps(cfg, ran)
    if not lines:
        return
    console.print("\n[bold]next[/]")
    for label, text in lines:
        console.print(f"  {label:<17} {mask_url_credentials(text)}", highlight=False,
                      soft_wrap=True)


def tool_command(tool: str) -> str:
    """How to call a console script of this installation, as the user started nfpipe:
    the bare name when it is on PATH, else its path beside this Python (relative to the
    working directory when inside it), else `python -m`."""
    beside = Path(sys.executable).parent / tool
    found = shutil.which(tool)
    if found and beside.exists() and os.path.samefile(found, beside):
        return tool
    if beside.exists():
        return _shown_path(beside)
    if found:
        return tool
    return f"{_shown_path(Path(sys.executable))} -m {_MODULES.get(tool, tool)}"


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _mlflow_ui(tracking_uri: str) -> str | None:
    """The command that opens the MLflow UI on this store, or the server's address; None
    while a local store does not exist yet (nothing was tracked)."""
    uri = absolute_tracking_uri(tracking_uri)
    folder = sqlite_folder(uri)
    if folder is None:
        return uri
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return f"{tool_command('mlflow')} ui --backend-store-uri {uri}"


def _ok_outputs(workdir: Path, stage: str) -> dict | None:
    record = read_record(workdir, stage)
    return record.outputs if record and record.status == "ok" else None
