"""From a finished run to what later stages and people read: the model bundle, a table."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from data_prep import storage
from train import checkpoint


def export_bundle(checkpoint_dir: str | Path, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Rebuild the checkpoint's model from its bundle alone and save it to `out_dir`.

    The checkpoint is a local folder or a URL (only its model bundle is downloaded). Loading
    before saving proves the bundle is complete; `meta` is merged over the checkpoint's own
    (epoch, val_bpd, dataset, manifest fingerprint…).
    """
    from flows.io import load_meta, load_model, save_model

    bundle = storage.join(checkpoint_dir, checkpoint.MODEL_SUBDIR)
    with storage.local_copy(bundle) as source:
        model = load_model(source)
        bundle_meta = load_meta(source)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return save_model(model, out_dir, {**bundle_meta, **meta})


def history_table(history: Sequence[dict[str, float]], title: str) -> Table:
    """Train and val bits/dim per epoch (epoch 0: the initialised model)."""
    table = Table(title=f"train/val bits per dim — {title}")
    for column in ("epoch", "step", "train bpd", "val bpd", "images/s", "skipped"):
        table.add_column(column, justify="right")
    for row in history:
        table.add_row(
            str(int(row["epoch"])),
            str(int(row.get("step", 0))),
            _fmt(row.get("train_bpd")),
            _fmt(row.get("val_bpd")),
            _fmt(row.get("images_per_s"), ".0f"),
            str(int(row.get("skipped_steps", 0))),
        )
    return table


def _fmt(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)
