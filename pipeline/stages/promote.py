"""promote stage: register the evaluated model; it takes `champion` only if it is better.

See `deploy/registry.py` for the gate (val bpd on the same val split, `promote.margin`
bits/dim; the test bpd is tagged and reported, never compared) and how two pipelines
finishing at once are serialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.config import registered_model_name
from pipeline.stages.base import StageContext, StageOutputs


def run(ctx: StageContext) -> StageOutputs:
    from deploy.registry import Candidate, register_and_promote

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # rich owns the console
    evaluated = ctx.inputs["evaluate"]
    meta = _bundle_meta(evaluated["model_dir"])
    candidate = Candidate(
        test_bpd=float(evaluated["test_bpd"]),
        val_bpd=float(evaluated["val_bpd"]),
        dataset=evaluated.get("dataset") or meta.get("dataset", ""),
        manifest_fingerprint=evaluated["manifest_fingerprint"],
        run_id=evaluated["run_id"],
        family=evaluated.get("family") or ctx.config.train.model.name,
        epoch=int(meta.get("epoch") or 0),
        final_metrics=(("bpd/test_eval", float(evaluated["test_bpd"])),
                       ("bpd/val_eval", float(evaluated["val_bpd"]))),
        bpd_at_k={key: float(value) for key, value in evaluated.items()
                  if key.startswith("test_bpd_k")},
    )
    ctx.experiment_id()
    name = registered_model_name(ctx.config)
    decision, uri = register_and_promote(ctx.tracking_uri, name, evaluated["model_dir"],
                                         candidate, ctx.config.promote)
    verdict = "[bold green]promoted[/]" if decision.promoted else "[yellow]kept champion[/]"
    ctx.console.print(f"    {name} v{decision.version}: {verdict} - {decision.reason}")
    return {
        "model_name": name,
        "version": decision.version,
        "champion_version": decision.champion_version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "model_uri": uri,
        "manifest": evaluated.get("manifest"),
    }


def _bundle_meta(model_dir: str) -> dict:
    path = Path(model_dir) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}
