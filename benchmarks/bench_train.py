"""Train-stage throughput on this machine: Ray Train scaling and Ray's overhead.

On synthetic CIFAR-shaped shards (3x32x32, 256 levels), one epoch of a scaled-down Glow
(the CIFAR recipe's levels=3 steps=32 hidden=512 is far beyond 2 CPU cores):

1. the plain loop in this process, 1 thread and 2 threads (no Ray)          -> baselines
2. Ray Train, 1 worker x 2 CPUs (2 torch threads)                           -> Ray overhead
3. Ray Train, 2 workers x 1 CPU (1 thread each, DDP over gloo)              -> scaling

and a gloo all-reduce of one gradient's worth of float32 between 2 Ray Train workers, to
split the 2-worker step into compute and communication. Same global batch everywhere.

    .venv/bin/python benchmarks/bench_train.py [--workdir DIR] [--train 1024] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: E402
from bench_shards import write_archive  # noqa: E402

from data_prep import DataPrepConfig, Manifest, prepare  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.ddp import WorkerInfo  # noqa: E402
from train.distributed import fit  # noqa: E402
from train.loop import TrainJob, resolve_model_config, train  # noqa: E402

MODEL = {"name": "glow", "levels": 3, "steps": 4, "hidden": 64}


def shards(workdir: Path, n_train: int, n_test: int) -> Path:
    archive = workdir / "cifar-10-python.tar.gz"
    if not archive.exists():
        write_archive(archive, n_train, n_test)
    cfg = DataPrepConfig(dataset="cifar10", source=archive, output_root=workdir / "shards",
                         shard_max_count=256)
    return prepare(cfg).resolve()


def train_config(workers: int, cpus: int, epochs: int, batch: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": MODEL, "epochs": epochs, "batch_size": batch, "eval_at_start": False,
        "sample_n": 16, "sample_temperatures": [1.0], "log_every": 10**6,
        "optim": {"warmup_steps": 10},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus},
    })


def plain(cfg: TrainConfig, manifest: Path, threads: int) -> dict:
    start = time.perf_counter()
    summary = train(cfg, TrainJob(str(manifest), verbose=False), WorkerInfo(threads=threads),
                    lambda metrics, ckpt: None)
    return {"wall_s": time.perf_counter() - start, **summary["final"]}


def on_ray(cfg: TrainConfig, manifest: Path, storage: Path, name: str) -> dict:
    start = time.perf_counter()
    result = fit(cfg, TrainJob(str(manifest), verbose=False), storage, name)
    return {"wall_s": time.perf_counter() - start, **result.summary["final"]}


def allreduce_ms(numel: int, storage: Path, reps: int = 20) -> float:
    """Mean wall time of a gloo all_reduce of `numel` float32 between 2 Ray Train workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def probe(config):
        import torch.distributed as dist

        torch.set_num_threads(1)
        grad = torch.ones(config["numel"])
        for _ in range(3):
            dist.all_reduce(grad)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(config["reps"]):
            dist.all_reduce(grad)
        return (time.perf_counter() - start) / config["reps"] * 1e3

    trainer = TorchTrainer(probe, train_loop_config={"numel": numel, "reps": reps},
                           scaling_config=ScalingConfig(num_workers=2),
                           run_config=RunConfig(name="allreduce", storage_path=str(storage)))
    return trainer.fit().return_value


def n_params(cfg: TrainConfig, manifest: Path) -> int:
    from flows import build_model

    model = build_model(resolve_model_config(cfg, Manifest.load(manifest)))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--test", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = shards(workdir, args.train, args.test)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = workdir / f"ray-{time.time_ns()}"
    one_by_two = train_config(1, 2, args.epochs, args.batch)
    two_by_one = train_config(2, 1, args.epochs, args.batch)
    rows = {
        "Ray Train, 1 worker x 2 CPUs": on_ray(one_by_two, manifest, storage, "w1x2"),
        "Ray Train, 2 workers x 1 CPU": on_ray(two_by_one, manifest, storage, "w2x1"),
        "plain loop, 1 process x 2 threads": plain(one_by_two, manifest, threads=2),
        "plain loop, 1 process x 1 thread": plain(one_by_two, manifest, threads=1),
    }
    for row, workers in zip(rows.values(), (1, 2, 1, 1), strict=True):
        row["cpu_ms_per_image"] = row["cpu_s"] / (args.train // args.batch * args.batch
                                                  // workers) * 1e3
    params = n_params(one_by_two, manifest)
    reduce_ms = allreduce_ms(params, storage)
    steps = args.train // args.batch
    report(rows, params, reduce_ms, steps, args)


def report(rows: dict, params: int, reduce_ms: float, steps: int, args) -> None:
    print(f"\n{platform.node()} nproc={os.cpu_count()} load={os.getloadavg()[0]:.1f} "
          f"torch={torch.__version__} model={json.dumps(MODEL)} params={params:,} "
          f"train={args.train} batch={args.batch} steps/epoch={steps}")
    print("| run | images/s (train) | epoch s | data s | rank-0 CPU s | CPU ms / image "
          "(rank 0) | whole run wall s | val bpd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['images_per_s']:.0f} | {r['epoch_s']:.1f} | {r['data_s']:.1f} "
              f"| {r['cpu_s']:.1f} | {r['cpu_ms_per_image']:.1f} | {r['wall_s']:.1f} "
              f"| {r['val_bpd']:.3f} |")
    base = rows["Ray Train, 1 worker x 2 CPUs"]["images_per_s"]
    two = rows["Ray Train, 2 workers x 1 CPU"]["images_per_s"]
    comm_s = reduce_ms / 1e3 * steps
    print(f"\n2x1 vs 1x2 throughput: {two / base:.2f}x  "
          f"(scaling efficiency on the same 2 cores = {two / base:.0%})")
    print(f"gloo all_reduce of {params:,} float32 ({params * 4 / 2**20:.1f} MiB) between 2 "
          f"workers: {reduce_ms:.1f} ms/step -> {comm_s:.1f} s/epoch of "
          f"{rows['Ray Train, 2 workers x 1 CPU']['epoch_s']:.1f} s")
    plain_wall = rows["plain loop, 1 process x 2 threads"]["wall_s"]
    ray_wall = rows["Ray Train, 1 worker x 2 CPUs"]["wall_s"]
    print(f"Ray overhead (1 worker x 2 CPUs vs plain loop, {args.epochs} epoch): "
          f"{ray_wall - plain_wall:+.1f} s wall ({ray_wall / plain_wall:.2f}x)")
    assert all(math.isfinite(r["val_bpd"]) for r in rows.values())


if __name__ == "__main__":
    main()
