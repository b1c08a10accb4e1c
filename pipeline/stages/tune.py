"""tune stage: a Ray Tune sweep over the train config (see tune/sweep.py).

Reads the manifest from data_prep; the sweep's name comes from this stage's fingerprint, so a
re-run after an interruption resumes the same Tune experiment instead of starting over.
"""

from __future__ import annotations

from data_prep import Manifest
from pipeline.stages.base import StageContext, StageOutputs
from tune.results import as_outputs
from tune.sweep import run_sweep, sweep_name


def run(ctx: StageContext) -> StageOutputs:
    manifest_path = ctx.inputs["data_prep"]["manifest"]
    name = sweep_name(ctx.config.name, ctx.fingerprint or "adhoc")
    result = run_sweep(ctx.config, manifest_path, ctx.stage_dir, name, ctx.console)
    ctx.console.print(
        f"    best trial {result.best_trial_id}: {ctx.config.tune.metric} "
        f"{result.best_test_bpd:.4f} at epoch {result.best_epoch} with {result.best_config}"
    )
    return as_outputs(result, Manifest.load(manifest_path))
