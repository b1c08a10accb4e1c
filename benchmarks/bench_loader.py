"""Loader throughput: decoded images/s per process from shards vs the same arrays in memory.

Both paths yield what training consumes: shuffled `(x uint8 [B, 3, 32, 32], label [B])`
CPU tensors. The memory baseline gathers shuffled rows of a numpy array; the shard path runs
`make_loader` (tar read + sha256 + buffer shuffle + PNG decode + collate) in this process
(num_workers=0). A breakdown times each stage alone, to show what bounds the loader.

    .venv/bin/python benchmarks/bench_loader.py [--workdir DIR] [--n 20000] [--batch 256]

With --workdir pointing at bench_shards.py's folder it reuses those shards (60,000 images).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data_prep import DataPrepConfig, Manifest, make_loader, prepare
from data_prep.png import decode_png as decode_image
from data_prep.shard_reader import read_shard

sys.path.insert(0, str(Path(__file__).parent))
from bench_shards import write_archive  # noqa: E402

TARGET = 5_000  # decoded images/s per core at 32x32x3


def rate(n: int, seconds: float, cpu: float | None = None) -> str:
    text = f"{n / seconds:>9,.0f} images/s"
    return text + (f" ({n / cpu:>7,.0f} per CPU-second)" if cpu else "")


def time_loader(loader) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process)."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for x, _ in loader:
        n += len(x)
    return n, time.perf_counter() - start, time.process_time() - cpu


def memory_batches(images: np.ndarray, labels: np.ndarray, batch: int, seed: int):
    """The in-memory baseline: shuffled gathers of HWC rows -> contiguous CHW tensors."""
    order = np.random.default_rng(seed).permutation(len(images))
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i : i + batch]
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous()
        yield x, torch.from_numpy(labels[idx])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--n", type=int, default=20_000, help="train images to synthesise")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / "cifar-10-python.tar.gz"
    if not archive.exists():
        write_archive(archive, args.n, 1_000)
    manifest = Manifest.load(prepare(DataPrepConfig(dataset="cifar10", source=archive,
                                                    output_root=workdir / "shards")))
    split = manifest.split("train")

    # the same arrays in memory, decoded once from the shards
    chunks = [(decode_image(png), label) for shard in split.shards
              for _, _, png, label, _ in read_shard(manifest.root / shard.name, shard).samples()]
    images = np.stack([c[0] for c in chunks])
    labels = np.array([c[1] for c in chunks], dtype=np.int64)
    del chunks

    n_mem, t_mem, c_mem = time_loader(memory_batches(images, labels, args.batch, 0))
    n_train, t_train, c_train = time_loader(make_loader(manifest, "train", args.batch, seed=0))
    n_eval, t_eval, c_eval = time_loader(make_loader(manifest, "train", args.batch,
                                                     mode="eval"))
    n_w2, t_w2, _ = time_loader(make_loader(manifest, "train", args.batch, num_workers=2))

    # stage by stage, one process (CPU time, so other load on the machine counts less)
    start, pngs = time.process_time(), []
    for shard in split.shards:
        pngs.extend(sample.png for sample in read_shard(manifest.root / shard.name,
                                                        shard).samples())
    t_read = time.process_time() - start
    start = time.process_time()
    for png in pngs:
        decode_image(png)
    t_decode = time.process_time() - start

    print(f"{split.count} train images 32x32x3 in {len(split.shards)} shards, batch "
          f"{args.batch}, torch threads {torch.get_num_threads()}")
    print(f"memory baseline (shuffled gather + CHW)  {rate(n_mem, t_mem, c_mem)}")
    print(f"shards, train mode, 1 process            {rate(n_train, t_train, c_train)}")
    print(f"  target {TARGET:,}/core: {'met' if n_train / c_train >= TARGET else 'MISSED'}; "
          f"memory / shards = {(n_mem / c_mem) / (n_train / c_train):.0f}x per CPU-second")
    print(f"shards, eval mode, 1 process             {rate(n_eval, t_eval, c_eval)}")
    print(f"shards, train mode, 2 loader workers     {rate(n_w2, t_w2)}  (all processes)")
    print("breakdown, one process, per CPU-second:")
    print(f"  read + sha256 + tar parse + group      {rate(len(pngs), t_read)}")
    print(f"  PNG decode (PIL)                       {rate(len(pngs), t_decode)}")
    per_image = c_train / n_train * 1e6
    print(f"  per image: loader {per_image:.0f} us = read {t_read / len(pngs) * 1e6:.0f} + "
          f"decode {t_decode / len(pngs) * 1e6:.0f} + shuffle/collate/rest "
          f"{per_image - (t_read + t_decode) / len(pngs) * 1e6:.0f} us")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
