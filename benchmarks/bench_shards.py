"""Shard-writing throughput: 60,000 CIFAR-sized images (official pickled format) -> shards.

Synthesises `cifar-10-python.tar.gz` (5 x 10,000 train + 10,000 test, 32x32x3; smooth random
fields plus noise, so PNG sizes are close to real CIFAR's ~2.3 KB), then times
`data_prep.prepare` end to end: read + gunzip + unpickle the archive, PNG-encode, tar, sha256,
fsync, rename, manifest. Also times the no-op re-run and the per-image encoders, to show
what bounds the total.

    .venv/bin/python benchmarks/bench_shards.py [--workdir DIR] [--train 50000 --test 10000]
"""

from __future__ import annotations

import argparse
import io
import pickle
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_prep import DataPrepConfig, Manifest, prepare
from data_prep.shards import encode_image
from data_prep.sources import open_source

TARGET_S = 60.0


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 3072] in CIFAR's row layout (channel planes): smooth colour fields + noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        coarse = torch.rand(m, 3, 6, 6, generator=gen) * 255
        fine = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
        fine += torch.randn(m, 3, 32, 32, generator=gen) * 6
        out.append(fine.clamp(0, 255).round().to(torch.uint8).reshape(m, 3072).numpy())
    return np.concatenate(out)


def write_archive(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    members = {}
    sizes = [n_train // 5] * 5
    for i, (name, n) in enumerate([*((f"data_batch_{k}", s) for k, s in enumerate(sizes, 1)),
                                   ("test_batch", n_test)]):
        members[name] = pickle.dumps({b"batch_label": name.encode(),
                                      b"labels": rng.integers(0, 10, n).tolist(),
                                      b"data": synthetic_images(n, seed + i)}, protocol=2)
    members["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def encoder_rates(images: np.ndarray) -> dict[str, float]:
    """Images/s of single encoders on HWC uint8 images (one process)."""
    from PIL import Image

    rates = {}
    for level in (1, 6, 9):
        start = time.perf_counter()
        for image in images:
            Image.fromarray(image).save(io.BytesIO(), format="PNG", compress_level=level)
        rates[f"PNG level {level}"] = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for image in images:
        encode_image(image)
    rates["encode_image (ours)"] = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for image in images:
        np.save(io.BytesIO(), image)
    rates["npy (uncompressed)"] = len(images) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_shards_"))
    workdir.mkdir(parents=True, exist_ok=True)
    total = args.train + args.test

    archive = workdir / "cifar-10-python.tar.gz"
    if not archive.exists():
        start = time.perf_counter()
        write_archive(archive, args.train, args.test)
        print(f"synthesised {archive} ({archive.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - start:.1f} s (not counted)")
    out = workdir / "shards"
    shutil.rmtree(out, ignore_errors=True)
    cfg = DataPrepConfig(dataset="cifar10", source=archive, output_root=out)

    start = time.perf_counter()
    source = open_source(cfg)
    read_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    manifest_path = prepare(cfg)
    prepare_s, prepare_cpu = time.perf_counter() - start, time.process_time() - cpu
    del source  # the benchmark's own copy; prepare() reads the archive itself
    start = time.perf_counter()
    prepare(cfg)
    noop_s = time.perf_counter() - start

    manifest = Manifest.load(manifest_path)
    shard_bytes = sum((manifest.root / s.name).stat().st_size
                      for split in manifest.splits.values() for s in split.shards)
    images = synthetic_images(3000, 99).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    print(f"images: {total} ({args.train} train + {args.test} test), 32x32x3")
    print(f"prepare() total: {prepare_s:.1f} s = {total / prepare_s:,.0f} images/s "
          f"(target < {TARGET_S:.0f} s: {'met' if prepare_s < TARGET_S else 'MISSED'})")
    print(f"  CPU time of this process: {prepare_cpu:.1f} s = {total / prepare_cpu:,.0f} "
          "images per CPU-second (one process does all the work)")
    print(f"  of which reading the archive (gunzip + unpickle + fingerprint): {read_s:.1f} s")
    print(f"  shards: {sum(len(s.shards) for s in manifest.splits.values())} files, "
          f"{shard_bytes / 1e6:.0f} MB ({shard_bytes / total:,.0f} B/image)")
    print(f"no-op re-run (fingerprint source + sha256 every shard): {noop_s:.1f} s")
    print("single-encoder rates on 3,000 such images (images/s, one process):")
    for name, rate in encoder_rates(images).items():
        print(f"  {name:22s} {rate:9,.0f}")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
