"""The sweep's leaderboard, read back from MLflow: table files, a bpd-vs-epoch plot, a rich table.

MLflow's child runs are the record of a sweep (they survive restores and are what people look
at), so the leaderboard is built from them rather than from Tune's in-memory results.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tracking import client, epoch_metric
from tune.trial_logger import (
    OVERRIDES_TAG,
    STATUS_TAG,
    STEPS_TAG,
    TRIAL_TAG,
    child_runs,
)

# a child run's params that give the trial's LR warm-up: in steps, or in images of its batch
WARMUP_PARAMS = ("train.optim.warmup_steps", "train.optim.warmup_images", "train.batch_size")


@dataclass
class TrialRow:
    """One trial of the sweep as MLflow recorded it."""

    trial_id: str
    run_id: str
    status: str  # completed | stopped early | error | running
    overrides: dict[str, Any]
    n_params: int | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric)
    steps: int | None = None  # optimiser steps the trial took
    warmup_steps: int | None = None  # its learning-rate warmup

    @property
    def epochs(self) -> int:
        return max((epoch for epoch, _ in self.curve), default=0)

    @property
    def warming_up(self) -> bool:
        """The trial stopped before its LR warmup ended: it never trained at its own lr, so
        its score says little about that lr."""
        if self.steps is None or not self.warmup_steps:
            return False
        return self.steps < self.warmup_steps

    def warmup_text(self) -> str:
        if self.steps is None or not self.warmup_steps:
            return ""
        return f"{self.steps}/{self.warmup_steps}" if self.warming_up else "done"

    def best(self, mode: str = "min") -> tuple[int, float]:
        """(epoch, value) of the best reported metric; (0, nan) when nothing was reported."""
        finite = [(e, v) for e, v in self.curve if math.isfinite(v)]
        if not finite:
            return 0, math.nan
        pick = min if mode == "min" else max
        return pick(finite, key=lambda item: item[1])


def collect_rows(
    tracking_uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str
) -> list[TrialRow]:
    """Every child run of the sweep with its metric curve (`metric` as Tune reports it, read
    under its MLflow name), best first."""
    mlflow = client(tracking_uri)
    rows = []
    for run in child_runs(tracking_uri, experiment_id, parent_run_id):
        history = mlflow.get_metric_history(run.info.run_id, epoch_metric(metric))
        params, tags = run.data.params, run.data.tags
        rows.append(
            TrialRow(
                trial_id=tags.get(TRIAL_TAG, run.info.run_name),
                run_id=run.info.run_id,
                status=tags.get(STATUS_TAG, "running"),
                overrides=json.loads(tags.get(OVERRIDES_TAG, "{}")),
                n_params=_int(params.get("model.n_params")),
                curve=sorted((m.step, m.value) for m in history),
                steps=_int(tags.get(STEPS_TAG)),
                warmup_steps=_warmup_steps(params),
            )
        )
    return sort_rows(rows, mode)


def _warmup_steps(params: dict[str, str]) -> int | None:
    """The trial's warm-up in optimiser steps: warmup_steps, or ceil(images / batch)."""
    steps, images, batch = (_int(params.get(name)) for name in WARMUP_PARAMS)
    if images is not None and batch:
        return -(-images // batch)
    return steps


def _int(text: str | None) -> int | None:
    return int(text) if text not in (None, "", "None") else None


def sort_rows(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    sign = 1.0 if mode == "min" else -1.0

    def key(row: TrialRow) -> tuple[bool, float]:
        value = row.best(mode)[1]
        return (not math.isfinite(value), sign * value if math.isfinite(value) else 0.0)

    return sorted(rows, key=key)


def _columns(rows: list[TrialRow]) -> list[str]:
    return sorted({path for row in rows for path in row.overrides})


def as_records(rows: list[TrialRow], metric: str, mode: str) -> list[dict[str, Any]]:
    """One flat dict per trial, in leaderboard order (CSV / markdown rows)."""
    records = []
    for rank, row in enumerate(rows, start=1):
        best_epoch, best = row.best(mode)
        record = {
            "rank": rank,
            "trial": row.trial_id,
            "status": row.status,
            "epochs": row.epochs,
            f"best_{metric}": round(best, 5) if math.isfinite(best) else None,
            "best_epoch": best_epoch,
            f"last_{metric}": round(row.curve[-1][1], 5) if row.curve else None,
            "steps": row.steps,
            "warmup": row.warmup_text(),
        }
        record.update({path: row.overrides.get(path) for path in _columns(rows)})
        record["n_params"] = row.n_params
        record["run_id"] = row.run_id
        records.append(record)
    return records


def write_leaderboard(rows: list[TrialRow], out_dir: Path, metric: str, mode: str) -> list[Path]:
    """leaderboard.csv, leaderboard.md and bpd_vs_epoch.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = as_records(rows, metric, mode)
    csv_path, md_path = out_dir / "leaderboard.csv", out_dir / "leaderboard.md"
    if records:
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        csv_path.write_text("")
    md_path.write_text(markdown_table(records))
    plot_path = plot_curves(rows, out_dir / "bpd_vs_epoch.png", metric, mode)
    return [csv_path, md_path, plot_path]


def markdown_table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "(no trials)\n"
    header = list(records[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in header) + " |" for r in records]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plot_curves(rows: list[TrialRow], path: Path, metric: str, mode: str) -> Path:
    """Metric vs epoch for every trial; the best trial drawn thick, stopped trials dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for rank, row in enumerate(rows):
        if not row.curve:
            continue
        epochs, values = zip(*row.curve, strict=True)
        label = f"{row.trial_id} " + " ".join(f"{k.split('.')[-1]}={_cell(v)}"
                                              for k, v in sorted(row.overrides.items()))
        ax.plot(
            epochs, values, marker="o", markersize=3,
            linewidth=2.5 if rank == 0 else 1.0,
            linestyle="--" if row.status == "stopped early" else "-",
            label=label[:60],
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (bits/dim)" if "bpd" in metric else metric)
    ax.set_title(f"sweep: {metric} per epoch ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def leaderboard_table(rows: list[TrialRow], metric: str, mode: str, title: str) -> Table:
    """The final leaderboard for the console: compact, best first (full names in the CSV)."""
    better = "lower" if mode == "min" else "higher"
    table = Table(
        title=f"{title}, {metric} {better} is better", title_justify="left", box=None,
        pad_edge=False, padding=(0, 1, 0, 0), header_style="bold underline",
    )
    params = _columns(rows)
    short = {path: path.rsplit(".", 1)[-1] for path in params}
    if len(set(short.values())) < len(short):
        short = {path: path for path in params}
    columns = ("#", "trial", "status", "epochs", "best@epoch", "warmup", *short.values(), "params")
    for column in columns:
        justify = "left" if column in ("trial", "status") else "right"
        table.add_column(column, justify=justify, no_wrap=True)
    styles = {"completed": "green", "stopped early": "yellow", "error": "red"}
    for rank, row in enumerate(rows, start=1):
        best_epoch, best = row.best(mode)
        status = {"stopped early": "stopped", "completed": "done"}.get(row.status, row.status)
        table.add_row(
            str(rank),
            row.trial_id.rsplit("_", 1)[-1],
            f"[{styles.get(row.status, 'dim')}]{status}[/]",
            str(row.epochs),
            f"{best:.4f}@{best_epoch}" if math.isfinite(best) else "",
            f"[yellow]{row.warmup_text()}[/]" if row.warming_up else row.warmup_text(),
            *(_cell(row.overrides.get(path)) for path in params),
            _cell(row.n_params),
            style="bold" if rank == 1 else None,
        )
    return table
