"""data_prep stage: shard the configured dataset (see data_prep/)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from data_prep import Manifest, prepare
from pipeline.stages.base import StageContext, StageOutputs


def run(ctx: StageContext) -> StageOutputs:
    cfg = ctx.config.data_prep
    columns = (
        TextColumn("    {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=ctx.console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(f"{cfg.dataset} {split}", total=total)
            bar.update(tasks[split], completed=done, total=total)

        manifest_path = prepare(cfg, progress=progress)
    manifest = Manifest.load(manifest_path)
    counts = ", ".join(f"{name} {split.count}" for name, split in manifest.splits.items())
    ctx.console.print(f"    {manifest.dataset} {tuple(manifest.image_shape)}: {counts}")
    return {
        "manifest": str(manifest_path.resolve()),
        "manifest_fingerprint": manifest.fingerprint,
    }
