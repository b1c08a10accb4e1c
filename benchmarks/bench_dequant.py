"""Cost of variational dequantisation in training step time, as a ratio against uniform.

At CIFAR shape (3x32x32, 256 levels), batch 16, Adam, one torch thread: one training step
(objective forward, backward, Adam) of each model with `dequantization: uniform` and with
`dequantization: variational` (q(u|x) with the default `dequant_steps` / `dequant_hidden`),
the two timed in alternation so a shared machine's load hits both alike. Prints the median
step times, their ratio and the load averages.

    nice -n 10 .venv/bin/python benchmarks/bench_dequant.py [--reps 5] [--models glow-K8 realnvp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flows  # noqa: E402

SHAPE, BINS, BATCH = (3, 32, 32), 256, 16
MODELS = {  # as in bench_flows.py
    "glow-K8": dict(name="glow", levels=3, steps=8, hidden=512),
    "realnvp": dict(name="realnvp", levels=2, steps=3, hidden=64, res_blocks=8),
}


def make(key: str, dequantization: str):
    torch.manual_seed(0)
    cfg = flows.ModelConfig(image_shape=SHAPE, n_bins=BINS, dequantization=dequantization,
                            **MODELS[key])
    model = flows.build_model(cfg)
    x = torch.randint(0, BINS, (BATCH, *SHAPE), dtype=torch.uint8)
    flows.initialize_from_batch(model, x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).mean().backward()
        optimizer.step()

    return step


def seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed steps of each variant")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# load {os.getloadavg()}, torch {torch.__version__}, 1 thread, batch {BATCH}")
    for key in args.models:
        steps = {kind: make(key, kind) for kind in ("uniform", "variational")}
        times: dict[str, list[float]] = {kind: [] for kind in steps}
        for step in steps.values():  # warm-up
            seconds(step)
        for _ in range(args.reps):
            for kind, step in steps.items():
                times[kind].append(seconds(step))
        uniform, variational = (statistics.median(times[k]) for k in ("uniform", "variational"))
        print(f"| {key} | {uniform:.3f} s | {variational:.3f} s | {variational / uniform:.2f}x "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
