"""ASHA against running every trial to max_t (FIFO): epochs spent and best bpd found.

The same seed, search space and trials (random search draws the same configs for both), on
digits, through `tune.sweep.run_sweep` with a real local Ray and a SQLite MLflow in a temp
folder. Reports total trial-epochs, the best test bpd and wall time of each, and checks the
target: ASHA spends <= 50% of FIFO's epochs for a best bpd within 0.02.

    .venv/bin/python benchmarks/bench_tune.py [--samples 8] [--max-t 8] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from rich.console import Console

from data_prep import DataPrepConfig, prepare
from pipeline.config import validate
from pipeline.stages.tune import sweep_spec
from tune.sweep import run_sweep

EPOCH_SHARE, BPD_GAP = 0.50, 0.02  # target: <= 50% of the epochs, best bpd within 0.02


def sweep_config(workdir: Path, shards: Path, args, scheduler: str) -> dict:
    return {
        "name": f"bench-{scheduler}",
        "workdir": str(workdir / "work"),
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
                   "artifact_root": str(workdir / "mlartifacts")},
        "data_prep": {"dataset": "digits", "output_root": str(shards)},
        "train": {
            "model": {"name": "glow", "hidden": 16},
            "batch_size": 64,
            "optim": {"warmup_steps": 20},
            "sample_n": 16,
            "sample_temperatures": [1.0],
            "checkpoints_keep": 1,
        },
        "tune": {
            "space": {
                "model.levels": [1, 2],
                "model.steps": [1, 2, 3],
                "model.coupling": ["affine", "additive"],
                "optim.lr": {"loguniform": [1e-4, 3e-3]},
            },
            "num_samples": args.samples,
            "scheduler": scheduler,
            "grace_period": 1,
            "reduction_factor": args.rf,
            "max_t": args.max_t,
            "max_concurrent_trials": args.cpus,
            "seed": args.seed,
            "verbose": False,
        },
    }


def run(workdir: Path, shards: Path, manifest: Path, args, scheduler: str) -> dict:
    cfg = validate(sweep_config(workdir / scheduler, shards, args, scheduler))
    start = time.perf_counter()
    spec = sweep_spec(cfg, manifest, workdir / scheduler / "out", f"bench-{scheduler}")
    result = run_sweep(spec, Console(quiet=True))
    return {"scheduler": scheduler, "wall_s": time.perf_counter() - start,
            "epochs": result.trial_epochs, "best": result.best_value,
            "stopped": result.stopped_early, "config": result.best_config}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="trials per sweep")
    parser.add_argument("--max-t", type=int, default=8, help="epochs of a full trial")
    parser.add_argument("--rf", type=float, default=3.0, help="ASHA reduction factor")
    parser.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = trials at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import ray

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tune_"))
    shards = workdir / "shards"
    manifest = prepare(DataPrepConfig(dataset="digits", output_root=shards))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        rows = [run(workdir, shards, manifest, args, s) for s in ("fifo", "asha")]
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    fifo, asha = rows
    share, gap = asha["epochs"] / fifo["epochs"], asha["best"] - fifo["best"]
    print(f"# {date.today()} {platform.node()} nproc={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}; {args.samples} trials, max_t {args.max_t}, "
          f"rf {args.rf:g}, seed {args.seed}")
    print("| scheduler | trial-epochs | stopped early | best test bpd | wall s | best config |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['scheduler']} | {r['epochs']} | {r['stopped']} | {r['best']:.4f} | "
              f"{r['wall_s']:.0f} | {r['config']} |")
    met = share <= EPOCH_SHARE and gap <= BPD_GAP
    print(f"ASHA/FIFO epochs {share:.0%}, best bpd gap {gap:+.4f}: target "
          f"(<= {EPOCH_SHARE:.0%}, <= {BPD_GAP}) {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
