"""Cold vs warm compile of the training objective with inductor, through the node's compile
cache (`train.compile_cache`).

Each run is a fresh Python process (as a second run, a Ray worker or a Tune trial is) that
points the cache at one folder, builds a data-initialised Glow, wraps it as training does
(`train.ddp.wrap_for_training`: inductor, fullgraph) and times its first forward + backward
(Dynamo's trace, AOTAutograd, inductor's compile, then the step) and a second one (the step
alone). Run 1 starts from an empty folder (cold); run 2 finds run 1's entries (warm). The
compile seconds are first minus second call.

    .venv/bin/python benchmarks/bench_compile_cache.py [--levels 1 --steps 2 --hidden 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One process: compile and time the objective with the cache in `args.cache`."""
    sys.path.insert(0, str(ROOT))
    import torch

    from flows import build_model, initialize_from_batch
    from flows.config import ModelConfig
    from train.compile_cache import use_compile_cache
    from train.ddp import WorkerInfo, wrap_for_training

    use_compile_cache(args.cache)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="glow", levels=args.levels, steps=args.steps,
                                    hidden=args.hidden, image_shape=(3, 32, 32), n_bins=256))
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    initialize_from_batch(model, x)
    objective = wrap_for_training(model, WorkerInfo(), compile_=True)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        objective(x).mean().backward()
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"first_s": seconds[0], "second_s": seconds[1],
                      "compile_s": seconds[0] - seconds[1]}))


def run(args: argparse.Namespace, cache: str) -> dict:
    command = [sys.executable, __file__, "--child", "--cache", cache, "--levels",
               str(args.levels), "--steps", str(args.steps), "--hidden", str(args.hidden),
               "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="nfpipe-compile-cache-") as cache:
        cold, warm = run(args, cache), run(args, cache)
    print(f"Glow L={args.levels} K={args.steps} hidden {args.hidden}, 3x32x32, batch 4, "
          f"inductor on CPU, {args.threads} threads: objective forward + backward")
    print(f"{'run':<6}{'first call s':>14}{'second call s':>15}{'compile s':>11}")
    for name, row in (("cold", cold), ("warm", warm)):
        print(f"{name:<6}{row['first_s']:>14.1f}{row['second_s']:>15.3f}{row['compile_s']:>11.1f}")


if __name__ == "__main__":
    main()
