"""The name of the Ray run (or sweep) a stage writes to: resumed by default, new on --force.

By default the name is a digest of the configuration, so an interrupted run is found again
and resumed. `--force` must train afresh, so it takes a new name (the old run and its MLflow
run stay as they are) and records it beside the stage's outputs: a later run of the same
configuration without --force resumes the forced run rather than the older one.
"""

from __future__ import annotations

import json
import time

from pipeline.records import write_json_atomic
from pipeline.stages.base import StageContext

RUN_NAME_FILE = "run_name.json"


def run_name_for(ctx: StageContext, default: str) -> str:
    """`default`, the name recorded by a forced run of this fingerprint, or (forced) a new
    name `{default}-{UTC time}`."""
    path = ctx.stage_dir / RUN_NAME_FILE
    if ctx.force:
        name = f"{default}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        write_json_atomic(path, {"fingerprint": ctx.fingerprint, "name": name})
        return name
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default
    if saved.get("fingerprint") == ctx.fingerprint and saved.get("name"):
        return str(saved["name"])
    return default
