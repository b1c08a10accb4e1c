"""The pipeline graph: data_prep → train → tune → evaluate → promote → deploy.

Stage modules are imported only when a stage runs, so `nfpipe config show` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.stages.base import Stage, StageContext, StageOutputs


def _lazy(module: str):
    def run(ctx: StageContext) -> StageOutputs:
        return importlib.import_module(module).run(ctx)

    run.__qualname__ = f"{module}.run"
    return run


def _lazy_recheck(module: str):
    def recheck(outputs: Any) -> str | None:
        return importlib.import_module(module).recheck(outputs)

    return recheck


def _sections(*names: str):
    def pick(cfg: Any) -> dict[str, Any]:
        return {name: getattr(cfg, name).model_dump(mode="json") for name in names}

    return pick


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("data_prep", (), _lazy("pipeline.stages.prep"), _sections("data_prep"),
              tracked=False, recheck=_lazy_recheck("pipeline.stages.prep")),
        Stage("train", ("data_prep",), _lazy("pipeline.stages.train"), _sections("train")),
        Stage("tune", ("data_prep",), _lazy("pipeline.stages.tune"), _sections("train", "tune")),
        Stage(
            "evaluate",
            ("data_prep", "train"),
            _lazy("pipeline.stages.evaluate"),
            _sections("evaluate"),
            optional_needs=("tune",),
        ),
        Stage(
            "promote",
            ("evaluate",),
            _lazy("pipeline.stages.promote"),
            _sections("promote", "mlflow"),
        ),
        Stage("deploy", ("promote",), _lazy("pipeline.stages.deploy"), _sections("deploy")),
    )
}
