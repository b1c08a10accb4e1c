"""Operators and host syncs per training step of the Glow CIFAR recipe, counted on CPU.

The cifar10 profile's model and optimiser (pipeline.yaml: Glow L=3, K=32, affine couplings,
Adamax, EMA; 3x32x32 images, 256 levels) run the real step (`train.state.build_state` +
`train.loop.train_step`) under a `TorchDispatchMode` that counts every aten call, split into
forward (the objective), backward (ops the autograd engine runs) and optimiser + EMA
(everything after: gradient clipping, the guarded optimiser step, the lr schedule, the EMA).
Counts are of dispatched aten operators: on a GPU almost every non-view one is a kernel
launch. Host syncs are reads of a tensor's value (`_local_scalar_dense`, `is_nonzero`),
but for the objective's check of a CPU batch's levels (`flows.bpd.check_levels`; the training
loop checks the host batch before the copy to the GPU, where the step reads nothing).

The counts do not depend on the batch or the width, so the defaults (batch 2, hidden 64)
keep it quick; `--hidden 512` is the recipe's width.

    .venv/bin/python benchmarks/bench_step_ops.py [--hidden 512] [--batch 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.config import TrainConfig  # noqa: E402
from train.ddp import WorkerInfo  # noqa: E402
from train.loop import train_step  # noqa: E402
from train.state import build_state  # noqa: E402

SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}
PHASES = ("forward", "backward", "optimizer+ema")


class StepOps(TorchDispatchMode):
    """Counts aten calls per phase of one step, and host syncs (not the level check's)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.non_views: Counter[str] = Counter()
        self.syncs: list[str] = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        in_backward = torch._C._current_autograd_node() is not None
        if in_backward:
            self.phase = "backward"
        elif self.phase == "backward":
            self.phase = "optimizer+ema"
        self.calls[self.phase] += 1
        self.non_views[self.phase] += not func.is_view
        if func in SYNCS:
            frames = [f.name for f in traceback.extract_stack()]
            if "check_levels" not in frames:
                self.syncs.append(f"{func} in {' < '.join(reversed(frames[-6:-1]))}")
        return func(*args, **(kwargs or {}))


def recipe(hidden: int, batch: int, ema: bool) -> TrainConfig:
    """The cifar10 profile's train section (pipeline.yaml), at `hidden` and `batch`."""
    optim = {"name": "adamax", "lr": 1e-3, "warmup_steps": 5000,
             "ema_decay": 0.9987 if ema else None}
    return TrainConfig.model_validate({
        "model": {"name": "glow", "levels": 3, "steps": 32, "hidden": hidden,
                  "coupling": "affine"},
        "batch_size": batch, "optim": optim, "scaling": {"num_workers": 1},
    })


def count(hidden: int, batch: int, ema: bool) -> dict:
    cfg = recipe(hidden, batch, ema)
    model_cfg = cfg.model.model_copy(update={"image_shape": (3, 32, 32), "n_bins": 256})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    state = build_state(cfg, model_cfg, WorkerInfo(), init_x=x)
    train_step(state, x, cfg)  # the optimiser's state exists from here on
    with StepOps() as ops:
        train_step(state, x, cfg)
    return {
        "ema": ema,
        "parameters": len(list(state.model.parameters())),
        "aten_calls": {p: ops.calls[p] for p in PHASES} | {"total": sum(ops.calls.values())},
        "non_view_calls": {p: ops.non_views[p] for p in PHASES}
        | {"total": sum(ops.non_views.values())},
        "host_syncs": len(ops.syncs),
        "sync_sites": sorted(set(ops.syncs)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [count(args.hidden, args.batch, ema) for ema in (False, True)]
    print(f"Glow CIFAR recipe (L=3, K=32, hidden {args.hidden}, batch {args.batch}), Adamax, "
          f"torch {torch.__version__}; aten calls per training step (non-view in brackets)")
    print(f"{'EMA':<5}{'params':>8}" + "".join(f"{p:>20}" for p in (*PHASES, "total"))
          + f"{'host syncs':>12}")
    for row in rows:
        cells = "".join(f"{row['aten_calls'][p]:>11} ({row['non_view_calls'][p]:>5})"
                        for p in (*PHASES, "total"))
        print(f"{'yes' if row['ema'] else 'no':<5}{row['parameters']:>8}{cells}"
              f"{row['host_syncs']:>12}")
        for site in row["sync_sites"]:
            print(f"    sync: {site}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
