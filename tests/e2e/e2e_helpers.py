"""The tiny settings of the end-to-end pipeline runs and how they start `nfpipe run`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import VENV_BIN, subprocess_env

TINY = {
    "train.epochs": 2,
    "train.eval_every": 1,
    "train.model.levels": 1,
    "train.model.steps": 1,
    "train.model.hidden": 8,
    "train.model.res_blocks": 1,
    "train.optim.warmup_steps": 10,
    "train.eval_k": 2,
    "train.sample_n": 16,
    "tune.num_samples": 2,
    "tune.max_t": 1,
    "tune.verbose": "false",
    "evaluate.grid_samples": 16,
    "evaluate.k": 2,
}


def nfpipe_run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run(
        [str(VENV_BIN / "nfpipe"), "run", *sets, *args],
        cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=600,
    )
