"""Run the pipeline's stages in dependency order, skipping the ones that are up to date."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from pipeline.config import ConfigError, PipelineConfig
from pipeline.locations import check_locations
from pipeline.records import (
    StageRecord,
    missing_paths,
    read_record,
    stable_hash,
    write_record,
)
from pipeline.stages import STAGES
from pipeline.stages.base import Stage, StageContext
from pipeline.workdir_lock import hold_workdir
from tracking import absolute_tracking_uri, check_reachable, mask_url_credentials
from train.typed import suggest

log = logging.getLogger(__name__)


OutcomeStatus = Literal["ran", "skipped", "failed"]


@dataclass
class Outcome:
    """What one stage did in this invocation."""

    stage: str
    status: OutcomeStatus
    seconds: float
    note: str = ""


class StageFailed(Exception):
    """A stage raised `error`; its record says why and the next run resumes at it."""

    def __init__(self, stage: str, error: BaseException, outcome: Outcome):
        super().__init__(stage, error, outcome)
        self.stage, self.error, self.outcome = stage, error, outcome

    def __str__(self) -> str:
        return f"stage {self.stage} failed: {type(self.error).__name__}: {self.error}"


def plan(targets: Sequence[str], graph: Mapping[str, Stage] = STAGES) -> list[Stage]:
    """The targets plus everything they need, in pipeline (graph insertion) order."""
    unknown = [t for t in targets if t not in graph]
    if unknown:
        name = unknown[0]
        raise ConfigError(
            f"unknown stage {name!r}{suggest(name, graph)}; stages: {', '.join(graph)}"
        )
    wanted: set[str] = set()
    pending = list(targets)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(graph[name].needs)
    return [stage for name, stage in graph.items() if name in wanted]


def run_pipeline(
    cfg: PipelineConfig,
    targets: Sequence[str] | None = None,
    force: bool = False,
    console: Console | None = None,
    graph: Mapping[str, Stage] = STAGES,
    release: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Run `targets` (default: `cfg.stages`) and what they need; raise StageFailed on failure.

    Before the workdir is touched, the MLflow tracking server (when a planned stage uses it)
    and the storage locations are checked to answer, so a wrong URI fails in seconds rather
    than after data preparation and Ray's start-up. Then one run at a time per workdir: the
    second fails at once (WorkdirBusy), naming the holder. `release()` runs after the last
    stage, before the summary (the CLI disconnects Ray there, so no late worker line comes
    after the summary)."""
    console = console or Console()
    workdir = Path(cfg.workdir).resolve()
    stages = plan(targets or cfg.stages, graph)
    check_tracking_server(cfg, stages)  # read-only checks first: a wrong setting writes nothing
    check_locations(cfg, [stage.name for stage in stages])  # seconds, before any work
    with hold_workdir(workdir, say=lambda line: console.print(line, highlight=False)):
        return _run_stages(cfg, stages, set(targets or cfg.stages) if force else set(),
                           workdir, console, graph, release)


def _run_stages(cfg: PipelineConfig, stages: list[Stage], forced: set[str], workdir: Path,
                console: Console, graph: Mapping[str, Stage],
                release: Callable[[], None] | None) -> list[Outcome]:
    done: dict[str, StageRecord] = {}
    outcomes: list[Outcome] = []
    console.print(f"[bold]nfpipe[/] {cfg.name} → {', '.join(s.name for s in stages)}  ({workdir})")
    try:
        for stage in stages:
            try:
                outcome, record = _run_or_skip(
                    stage, cfg, workdir, done, stage.name in forced, console, graph
                )
            except StageFailed as failure:
                outcomes.append(failure.outcome)
                raise
            outcomes.append(outcome)
            done[stage.name] = record
    finally:
        if release is not None:
            release()
        print_summary(outcomes, console)
    return outcomes


def check_tracking_server(cfg: PipelineConfig, stages: Sequence[Stage]) -> None:
    """Fail fast (TrackingServerUnreachable) when a planned stage needs an MLflow server that
    does not answer."""
    if any(stage.tracked for stage in stages):
        check_reachable(absolute_tracking_uri(cfg.mlflow.tracking_uri))


def upstream_records(
    stage: Stage,
    cfg: PipelineConfig,
    workdir: Path,
    done: Mapping[str, StageRecord],
    graph: Mapping[str, Stage],
) -> dict[str, StageRecord]:
    """The records a stage reads: this invocation's, else the latest current one on disk.

    A required stage is always planned, so it is in `done`. An optional one (tune for
    evaluate) is used when it ran now, or when its record from an earlier invocation is
    still current: status ok, its outputs on disk, and made from this config and from the
    same upstream records (so `--stages tune,evaluate` then `--stages promote` promotes the
    tuned model instead of re-evaluating the train stage's).
    """
    upstream: dict[str, StageRecord] = {}
    for name in (*stage.needs, *stage.optional_needs):
        record = done.get(name) or _current_record(graph[name], cfg, workdir, done, graph)
        if record is not None:
            upstream[name] = record
    return upstream


def _current_record(
    stage: Stage,
    cfg: PipelineConfig,
    workdir: Path,
    done: Mapping[str, StageRecord],
    graph: Mapping[str, Stage],
) -> StageRecord | None:
    """The stage's record on disk if running it now would be skipped as up to date."""
    record = read_record(workdir, stage.name)
    if record is None:
        return None
    upstream = upstream_records(stage, cfg, workdir, done, graph)
    if any(name not in upstream for name in stage.needs):
        return None
    if _stale_reason(record, stage_fingerprint(stage, cfg, upstream), force=False) is not None:
        return None
    return record


def stage_fingerprint(stage: Stage, cfg: PipelineConfig,
                      upstream: Mapping[str, StageRecord]) -> str:
    """Hash of the stage's own config and the fingerprints of the records it reads."""
    inputs = {name: rec.fingerprint for name, rec in sorted(upstream.items())}
    return stable_hash({"stage": stage.name, "config": stable_hash(stage.config_of(cfg)),
                        "inputs": inputs})


def _run_or_skip(
    stage: Stage,
    cfg: PipelineConfig,
    workdir: Path,
    done: dict[str, StageRecord],
    force: bool,
    console: Console,
    graph: Mapping[str, Stage] = STAGES,
) -> tuple[Outcome, StageRecord]:
    upstream = upstream_records(stage, cfg, workdir, done, graph)
    config_hash = stable_hash(stage.config_of(cfg))
    inputs = {name: rec.fingerprint for name, rec in sorted(upstream.items())}
    fingerprint = stage_fingerprint(stage, cfg, upstream)
    previous = read_record(workdir, stage.name)
    reason = _stale_reason(previous, fingerprint, force)
    earlier = sorted(name for name in upstream if name not in done)
    if earlier:
        console.print(f"  [dim]  {stage.name} reads {', '.join(earlier)} from an earlier run[/]")
    if reason is None and stage.recheck is not None:
        reason = stage.recheck(previous.outputs)
    if reason is None:
        console.print(f"  [dim]↷ {stage.name:<10} up to date, skipped[/]")
        return Outcome(stage.name, "skipped", 0.0, "up to date"), previous
    log.info("running %s: %s", stage.name, reason)
    record = StageRecord(
        stage.name, "running", fingerprint, config_hash, inputs, started=time.time()
    )
    write_record(workdir, record)
    ctx = StageContext(
        config=cfg,
        stage_dir=workdir / stage.name,
        inputs={name: rec.outputs for name, rec in upstream.items()},
        console=console,
        fingerprint=fingerprint,
        force=force,
    )
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"  [bold cyan]▶ {stage.name:<10}[/] running ({reason})")
    try:
        record.outputs = stage.run(ctx)
    except BaseException as err:
        record.status = "failed"
        record.error = mask_url_credentials(f"{type(err).__name__}: {err}")
        record.seconds = time.time() - record.started
        write_record(workdir, record)
        log.debug("stage %s failed:\n%s", stage.name,
                  mask_url_credentials(traceback.format_exc()))
        console.print(f"  [bold red]✗ {stage.name:<10} failed[/] after {record.seconds:.1f}s")
        outcome = Outcome(stage.name, "failed", record.seconds, record.error)
        raise StageFailed(stage.name, err, outcome) from err
    record.status, record.seconds = "ok", time.time() - record.started
    write_record(workdir, record)
    console.print(f"  [bold green]✓ {stage.name:<10}[/] done in {record.seconds:.1f}s")
    return Outcome(stage.name, "ran", record.seconds), record


def _stale_reason(previous: StageRecord | None, fingerprint: str, force: bool) -> str | None:
    """Why the stage must run, or None when its record is current."""
    if force:
        return "forced"
    if previous is None:
        return "never ran"
    if previous.status == "failed":
        return "resuming after a failure"
    if previous.status != "ok":
        return "resuming an interrupted run"
    if previous.fingerprint != fingerprint:
        return "config or inputs changed"
    gone = missing_paths(previous.outputs)
    if gone:
        return f"output missing: {gone[0]}"
    return None


def print_summary(outcomes: list[Outcome], console: Console) -> None:
    if not outcomes:
        return
    table = Table(title="pipeline summary", title_justify="left")
    for column in ("stage", "status", "time", "note"):
        table.add_column(column)
    styles = {"ran": "green", "skipped": "dim", "failed": "red"}
    for o in outcomes:
        status = f"[{styles[o.status]}]{o.status}[/]"
        table.add_row(o.stage, status, f"{o.seconds:.1f}s", o.note[:100])
    console.print(table)
