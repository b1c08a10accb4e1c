"""The stage runner on a small graph of real stages that write files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.config import ConfigError, validate
from pipeline.runner import StageFailed, plan, run_pipeline
from pipeline.stages.base import Stage, StageContext


def make_graph(log: list[str], fail_flag: Path) -> dict[str, Stage]:
    def produce(ctx: StageContext) -> dict:
        log.append("produce")
        out = ctx.stage_dir / "numbers.json"
        out.write_text(json.dumps(list(range(ctx.config.ray.num_cpus))))
        return {"numbers": str(out)}

    def consume(ctx: StageContext) -> dict:
        log.append("consume")
        if fail_flag.exists():
            raise RuntimeError("injected failure")
        numbers = json.loads(Path(ctx.inputs["produce"]["numbers"]).read_text())
        return {"total": sum(numbers), "experiment": ctx.config.mlflow.experiment}

    def report(ctx: StageContext) -> dict:
        log.append("report")
        return {"seen": ctx.inputs["consume"]["total"]}

    return {
        "produce": Stage("produce", (), produce, lambda c: c.ray),
        "consume": Stage("consume", ("produce",), consume, lambda c: c.mlflow),
        "report": Stage("report", ("consume",), report, lambda c: c.name),
    }


@pytest.fixture
def setup(tmp_path):
    log: list[str] = []
    flag = tmp_path / "fail"
    graph = make_graph(log, flag)

    def run(force=False, targets=("report",), **changes):
        raw = {"workdir": str(tmp_path / "work"), "ray": {"num_cpus": 4}, **changes}
        log.clear()
        outcomes = run_pipeline(
            validate(raw), list(targets), force=force, console=Console(quiet=True), graph=graph
        )
        return [(o.stage, o.status) for o in outcomes]

    return run, log, flag, tmp_path / "work"


def test_rerun_with_nothing_changed_skips_everything(setup):
    run, log, _, _ = setup
    assert run() == [("produce", "ran"), ("consume", "ran"), ("report", "ran")]
    assert run() == [("produce", "skipped"), ("consume", "skipped"), ("report", "skipped")]
    assert log == []


def test_changing_a_setting_reruns_that_stage_and_the_ones_after(setup):
    run, log, _, _ = setup
    run()
    assert run(mlflow={"experiment": "other"}) == [
        ("produce", "skipped"), ("consume", "ran"), ("report", "ran"),
    ]
    assert log == ["consume", "report"]


def test_failure_keeps_earlier_outputs_and_resumes_at_the_failed_stage(setup):
    run, log, flag, workdir = setup
    flag.touch()
    with pytest.raises(StageFailed) as failure:
        run()
    assert failure.value.args[0] == "consume"
    record = json.loads((workdir / "records" / "consume.json").read_text())
    assert record["status"] == "failed" and "injected failure" in record["error"]
    assert (workdir / "produce" / "numbers.json").exists()
    flag.unlink()
    assert run() == [("produce", "skipped"), ("consume", "ran"), ("report", "ran")]
    record = json.loads((workdir / "records" / "report.json").read_text())
    assert record["outputs"] == {"seen": 6} and record["status"] == "ok"


def test_missing_output_or_force_reruns(setup):
    run, _, _, workdir = setup
    run()
    (workdir / "produce" / "numbers.json").unlink()
    assert run()[0] == ("produce", "ran")
    assert run(force=True, targets=["consume"]) == [("produce", "skipped"), ("consume", "ran")]


def test_plan_pulls_in_needs_and_rejects_unknown_stages():
    names = [s.name for s in plan(["evaluate"])]
    assert names == ["data_prep", "train", "evaluate"]
    with pytest.raises(ConfigError, match=r"unknown stage 'trian' \(did you mean 'train'\?\)"):
        plan(["trian"])


def optional_graph(log: list[str]) -> dict[str, Stage]:
    """data -> train -> evaluate (uses tune when it is there) -> promote; tune needs data.
    Each stage writes a file, so its record is only valid while the file exists."""

    def stage(name: str, pick):
        def run(ctx: StageContext) -> dict:
            log.append(name)
            out = ctx.stage_dir / "out.json"
            out.write_text(json.dumps(pick(ctx)))
            return {"model": pick(ctx), "file": str(out)}

        return run

    evaluate = lambda ctx: (ctx.inputs.get("tune") or ctx.inputs["train"])["model"]  # noqa: E731
    return {
        "data": Stage("data", (), stage("data", lambda ctx: "shards"), lambda c: c.ray),
        "train": Stage("train", ("data",), stage("train", lambda ctx: "train-model"),
                       lambda c: c.train.epochs),
        "tune": Stage("tune", ("data",), stage("tune", lambda ctx: "tuned-model"),
                      lambda c: c.tune.num_samples),
        "evaluate": Stage("evaluate", ("data", "train"), stage("evaluate", evaluate),
                          lambda c: c.evaluate, optional_needs=("tune",)),
        "promote": Stage("promote", ("evaluate",),
                         stage("promote", lambda ctx: ctx.inputs["evaluate"]["model"]),
                         lambda c: c.promote),
    }


def test_a_stage_reads_the_latest_current_record_of_a_stage_not_run_now(tmp_path):
    """`--stages tune,evaluate`, then `--stages promote`, promotes tune's
    model: evaluate stays up to date (its optional input comes from tune's record on disk)
    instead of re-running on the train stage's model."""
    log: list[str] = []
    graph = optional_graph(log)
    workdir = tmp_path / "work"

    def run(targets, **changes):
        log.clear()
        cfg = validate({"workdir": str(workdir), **changes})
        outcomes = run_pipeline(cfg, targets, console=Console(quiet=True), graph=graph)
        return {o.stage: o.status for o in outcomes}

    assert run(["tune", "evaluate"])["evaluate"] == "ran"
    assert run(["promote"]) == {"data": "skipped", "train": "skipped", "evaluate": "skipped",
                                "promote": "ran"}
    promoted = json.loads((workdir / "records" / "promote.json").read_text())["outputs"]
    assert promoted["model"] == "tuned-model"

    # a tune record that is no longer current (its config changed) is not read: evaluate
    # runs again on the train stage's model
    assert run(["promote"], tune={"num_samples": 7})["evaluate"] == "ran"
    assert json.loads((workdir / "records" / "evaluate.json").read_text())["outputs"][
        "model"] == "train-model"
    # nor is one whose outputs are gone
    run(["tune", "evaluate"])
    Path(workdir / "tune" / "out.json").unlink()
    assert run(["promote"])["evaluate"] == "ran" and "tune" not in log
