"""What a person wants to know after a run: where the samples are, the MLflow UI, the champion."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.records import read_record
from tracking import absolute_tracking_uri


def print_next_steps(cfg: PipelineConfig, console: Console) -> None:
    workdir = Path(cfg.workdir).resolve()
    lines = []
    evaluate = read_record(workdir, "evaluate")
    if evaluate and evaluate.status == "ok":
        lines.append(f"test bits/dim     {evaluate.outputs['test_bpd']:.4f}")
    promote = read_record(workdir, "promote")
    if promote and promote.status == "ok":
        out = promote.outputs
        lines.append(
            f"champion          models:/{out['model_name']}@champion "
            f"(v{out['champion_version']}; this run registered v{out['version']})"
        )
    deploy = read_record(workdir, "deploy")
    if deploy and deploy.status == "ok" and deploy.outputs.get("sample_grid"):
        lines.append(f"samples           {deploy.outputs['sample_grid']}")
    uri = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    if uri.startswith("sqlite:"):
        lines.append(f"MLflow UI         .venv/bin/mlflow ui --backend-store-uri {uri}")
    else:
        lines.append(f"MLflow UI         {uri}")
    if promote and promote.status == "ok":
        name = promote.outputs["model_name"]
        lines.append(f"serve it          .venv/bin/nfpipe deploy serve --model {name}@champion")
    console.print("\n[bold]next[/]")
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
