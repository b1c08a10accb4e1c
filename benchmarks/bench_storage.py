"""Object storage: the loader from S3 vs local disk, one checkpoint upload, data_prep on Ray.

The S3 server is moto's standalone server in its own process on 127.0.0.1 (so its CPU time is
not counted against the loader), reached through AWS_ENDPOINT_URL as a user reaches MinIO.

- loader: images per CPU-second of this process through `make_loader` (tar read, sha256,
  shuffle, PNG decode, collate; num_workers=0), the same CIFAR-shaped shards from local disk
  and from S3; the ratio S3 / disk (target >= 0.7).
- checkpoint: one checkpoint of the CIFAR-10 Glow recipe (L=3, K=32, hidden 512; model
  bundle + train_state.pt after one Adamax step) uploaded with pyarrow's copy_files, as Ray
  Train persists a checkpoint.
- prep: a CelebA-like folder (JPEGs 178x218 -> 64x64, 5 bits) sharded in one process and as
  Ray tasks with 1 and 2 workers; images/s, scaling efficiency, identical manifests.

    .venv/bin/python benchmarks/bench_storage.py [--n-loader 20000] [--n-celeba 4000] \
        [--only loader,checkpoint,prep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from bench_shards import write_archive  # noqa: E402

from data_prep import DataPrepConfig, Manifest, make_loader, prepare  # noqa: E402

MOTO = """
import sys, threading
from moto.server import ThreadedMotoServer
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
threading.Event().wait()
"""


def start_s3() -> subprocess.Popen:
    """moto in its own process; the standard variables point every client at it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-c", MOTO, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


def s3fs():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


def time_loader(manifest: Manifest, batch: int) -> tuple[int, float, float]:
    """(images, wall s, CPU s of this process) for one epoch of the train split."""
    loader = make_loader(manifest, "train", batch, seed=0, epoch=1)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for x, _ in loader:
        n += len(x)
    return n, time.perf_counter() - start, time.process_time() - cpu


def bench_loader(work: Path, n: int, batch: int = 256) -> None:
    archive = work / "cifar-10-python.tar.gz"
    if not archive.exists():
        write_archive(archive, n, 1_000)
    local = Manifest.load(prepare(DataPrepConfig(dataset="cifar10", source=archive,
                                                 output_root=work / "shards")))
    fs = s3fs()
    fs.mkdir("bench")
    fs.put(str(local.root) + "/", "bench/shards/" + local.root.name, recursive=True)
    remote = Manifest.load(f"s3://bench/shards/{local.root.name}")
    assert remote.fingerprint == local.fingerprint
    time_loader(local, batch)  # warm the page cache and imports
    rows = {}
    for label, manifest in (("local disk", local), ("S3 (moto)", remote),
                            ("local disk again", local), ("S3 again", remote)):
        rows[label] = time_loader(manifest, batch)
        images, wall, cpu = rows[label]
        print(f"loader {label:<17} {images} images  {images / wall:8,.0f} images/s wall  "
              f"{images / cpu:8,.0f} per CPU-second")
    disk = sum(rows[k][0] / rows[k][2] for k in ("local disk", "local disk again")) / 2
    s3 = sum(rows[k][0] / rows[k][2] for k in ("S3 (moto)", "S3 again")) / 2
    print(f"loader S3 / disk images per CPU-second: {s3 / disk:.2f} (target >= 0.7)")


def bench_checkpoint(work: Path) -> None:
    import pyarrow.fs as pafs
    import torch

    from flows.io import save_model
    from pipeline.config import load_config
    from train import checkpoint
    from train.ddp import WorkerInfo
    from train.loop import resolve_model_config, train_step
    from train.state import build_state

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "pipeline.yaml", "cifar10").train
    manifest = Manifest.model_validate({
        "dataset": "cifar10", "image_shape": [3, 32, 32], "n_bins": 256,
        "source_fingerprint": "x", "config": {}, "splits": {}})
    model_cfg = resolve_model_config(cfg, manifest)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    state = build_state(cfg, model_cfg, WorkerInfo(threads=2), x)
    train_step(state, x, cfg)  # Adamax moments exist, as in a real checkpoint
    folder = work / "checkpoint"
    save_model(state.eval_model, checkpoint.model_bundle(folder), {"epoch": 1})
    checkpoint.save_state(folder, state.snapshot())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    s3fs().mkdir("ckpt")
    target, path = pafs.FileSystem.from_uri("s3://ckpt/run/checkpoint_0")
    start = time.perf_counter()
    pafs.copy_files(str(folder), path, destination_filesystem=target)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in state.model.parameters())
    print(f"checkpoint glow L=3 K=32 hidden 512: {params / 1e6:.1f} M params, "
          f"{size / 2**20:.0f} MiB, uploaded in {seconds:.1f} s ({size / 2**20 / seconds:.0f} "
          "MiB/s) with pyarrow.fs.copy_files to the local S3 server")


def write_celeba(root: Path, n: int) -> Path:
    """n JPEGs 178x218 (smooth random images) and the partition file (90% train, 10% test)."""
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        if not (images / name).exists():
            coarse = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((178, 218), Image.Resampling.BICUBIC).save(
                images / name, quality=90)
        lines.append(f"{name} {0 if i % 10 else 2}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def bench_prep(work: Path, n: int, order: list[int]) -> None:
    """The variants in `order` (0 = one process without Ray, N = Ray tasks on N workers;
    by default 0, 1, 2, 2, 1, 0: each twice, as the load of a shared machine drifts), each
    into a fresh folder; the fastest run of each variant counts."""
    import shutil

    import ray

    from pipeline.stages.prep import GROUPS_PER_WORKER, ray_map

    source = write_celeba(work / "celeba", n)
    base = {"dataset": "celeba", "source": str(source), "shard_max_count": 256}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    times: dict[str, list[float]] = {}
    fingerprints = set()
    labels = {0: ("one process", None), 1: ("Ray, 1 worker", 1), 2: ("Ray, 2 workers", 2)}
    for run, (label, workers) in enumerate(labels[w] for w in order):
        out = work / f"prep-out-{run}"
        shutil.rmtree(out, ignore_errors=True)
        kwargs = {} if workers is None else {
            "map_fn": lambda task, groups, w=workers: ray_map(task, groups, w),
            "groups_per_split": workers * GROUPS_PER_WORKER}
        start = time.perf_counter()
        manifest = Manifest.load(prepare(DataPrepConfig(**base, output_root=str(out)),
                                         **kwargs))
        seconds = time.perf_counter() - start
        times.setdefault(label, []).append(seconds)
        fingerprints.add(manifest.fingerprint)
        shutil.rmtree(out, ignore_errors=True)
        print(f"prep {label:<15} {n} images in {seconds:6.1f} s = {n / seconds:6.1f} images/s "
              f"(load {os.getloadavg()[0]:.1f})")
    ray.shutdown()
    best = {label: min(values) for label, values in times.items()}
    for label, seconds in best.items():
        print(f"prep best of {len(times[label])}, {label:<15} {n / seconds:6.1f} images/s")
    one, two = best["Ray, 1 worker"], best["Ray, 2 workers"]
    print(f"prep scaling 1 -> 2 workers: speed-up {one / two:.2f}, efficiency "
          f"{one / two / 2:.2f} of linear (target >= 0.8)")
    print(f"prep manifests identical across all runs: {len(fingerprints) == 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--n-loader", type=int, default=20_000)
    parser.add_argument("--n-celeba", type=int, default=4_000)
    parser.add_argument("--only", default="loader,checkpoint,prep")
    parser.add_argument("--prep-order", default="0,1,2,2,1,0",
                        help="data_prep runs in this order: 0 = one process, N = N Ray workers")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_storage_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    server = start_s3()
    try:
        parts = args.only.split(",")
        if "loader" in parts:
            bench_loader(work, args.n_loader)
        if "checkpoint" in parts:
            bench_checkpoint(work)
        if "prep" in parts:
            bench_prep(work, args.n_celeba, [int(w) for w in args.prep_order.split(",")])
    finally:
        server.kill()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
