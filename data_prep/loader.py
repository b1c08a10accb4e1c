"""Batches from a shard set, split across ranks and loader workers from the manifest alone.

Every rank computes the same plan with no communication, because the manifest knows every
shard's sample count. The split is laid out as one sequence (shards in manifest order for
eval, in an order shuffled by (seed, epoch) for train) and cut into contiguous ranges:

- train: each rank takes `N // world_size` samples and yields `that // batch_size` full
  batches (the remainder is dropped, a different part each epoch), so ranks never wait on
  one another in DDP; samples are shuffled through a buffer per worker.
- eval: ranks take ranges of N/world_size samples (sizes differ by at most one), no shuffle,
  so every sample is seen exactly once; the last batch of a rank may be short.

A rank's batches are dealt to its loader workers as contiguous blocks of whole batches, so
the batch count does not depend on `num_workers`. A worker reads only the shards its range
touches (at most two partly), through `data_prep.shard_reader`: each shard is checked whole
against the manifest (structure, sample count, sha256) before it is used, and a fault names
the shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep import storage
from data_prep.errors import DataPrepError, ShardError
from data_prep.manifest import Manifest, ShardInfo
from data_prep.shard_reader import ShardSample, decode_sample, read_shard

Batch = tuple[torch.Tensor, torch.Tensor]  # x uint8 [B, C, H, W], label int64 [B] (-1: none)


def make_loader(
    manifest: Manifest | str | Path,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    mode: Literal["train", "eval"] = "train",
    shuffle_buffer: int = 4096,
    prefetch: int = 2,
    pin_memory: bool = False,
) -> ShardLoader:
    """A re-iterable loader of `(x, label)` batches of one split for one rank (see module doc).

    With `num_workers > 0`, each worker keeps `prefetch` batches ready, and `pin_memory`
    pins them in page-locked memory (a background thread) for non-blocking copies to a GPU.
    """
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    return ShardLoader(manifest, split, batch_size, rank=rank, world_size=world_size,
                       num_workers=num_workers, seed=seed, epoch=epoch, mode=mode,
                       shuffle_buffer=shuffle_buffer, prefetch=prefetch,
                       pin_memory=pin_memory)


class ShardLoader:
    """The batches one rank sees in one epoch; `len()` is their number, `set_epoch` reshuffles."""

    def __init__(self, manifest: Manifest, split: str, batch_size: int, *, rank: int,
                 world_size: int, num_workers: int, seed: int, epoch: int,
                 mode: Literal["train", "eval"], shuffle_buffer: int, prefetch: int = 2,
                 pin_memory: bool = False):
        if mode not in ("train", "eval"):
            raise ValueError(f"Expected mode 'train' or 'eval', got {mode!r}.")
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 1 or prefetch < 1:
            raise ValueError(f"Expected batch_size >= 1, num_workers >= 0, shuffle_buffer >= 1, "
                             f"prefetch >= 1; got {batch_size}, {num_workers}, "
                             f"{shuffle_buffer}, {prefetch}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"Expected 0 <= rank < world_size, got rank {rank}, "
                             f"world_size {world_size}.")
        self.manifest, self.split, self.mode = manifest, split, mode
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed, self.epoch = num_workers, seed, epoch
        self.shuffle_buffer = shuffle_buffer
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self._info = manifest.split(split)
        self.start, self.end, self.num_batches = rank_range(
            self._info.count, rank, world_size, batch_size, mode)
        if mode == "train" and self.num_batches == 0:
            raise DataPrepError(
                f"{manifest.path}: split {split!r} has {self._info.count} samples, fewer than "
                f"world_size x batch_size = {world_size} x {batch_size}; lower batch_size"
            )

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Shuffle differently (train mode) on the next iteration."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        stream = _RankStream(self._plan())
        if self.num_workers == 0:
            yield from stream
            return
        batches = iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                  prefetch_factor=self.prefetch, pin_memory=self.pin_memory))
        for item in batches:
            if isinstance(item, _WorkerError):
                del batches  # stop the workers now, not when the traceback is collected
                raise DataPrepError(item.message)
            yield item

    def _plan(self) -> _Plan:
        shards = list(self._info.shards)
        if self.mode == "train":
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        return _Plan(self.manifest.folder, shards, tuple(self.manifest.image_shape),
                     self.batch_size, self.start, self.end, self.num_batches,
                     self.mode == "train", (self.seed, self.epoch, self.rank),
                     self.shuffle_buffer)


def rank_range(n: int, rank: int, world_size: int, batch_size: int,
               mode: str) -> tuple[int, int, int]:
    """(start, end, batches) of a rank's contiguous range in the split's sequence of n."""
    if mode == "train":
        per_rank = n // world_size
        batches = per_rank // batch_size
        start = rank * per_rank
        return start, start + batches * batch_size, batches
    start, end = rank * n // world_size, (rank + 1) * n // world_size
    return start, end, math.ceil((end - start) / batch_size)


def worker_range(start: int, end: int, batches: int, batch_size: int, worker: int,
                 workers: int) -> tuple[int, int]:
    """A worker's block of whole batches within its rank's range."""
    first, last = worker * batches // workers, (worker + 1) * batches // workers
    return start + first * batch_size, min(start + last * batch_size, end)


@dataclass(frozen=True)
class _Plan:
    """What one rank reads this epoch; picklable, so it travels to loader workers."""

    root: str  # the shard folder: an absolute path or a URL
    shards: list[ShardInfo]  # in reading order
    image_shape: tuple[int, int, int]
    batch_size: int
    start: int
    end: int
    batches: int
    shuffle: bool
    seed: tuple[int, int, int]  # (seed, epoch, rank)
    shuffle_buffer: int

    def batches_of(self, worker: int, workers: int) -> Iterator[Batch]:
        lo, hi = worker_range(self.start, self.end, self.batches, self.batch_size, worker,
                              workers)
        samples = samples_between(self.root, self.shards, lo, hi)
        if self.shuffle:
            rng = np.random.default_rng([*self.seed, worker])
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        for chunk in in_chunks(samples, self.batch_size):
            yield self._collate(chunk)

    def _collate(self, chunk: list[ShardSample]) -> Batch:
        x = decode_images(chunk, self.image_shape)
        labels = torch.tensor([sample.label for sample in chunk], dtype=torch.long)
        return torch.from_numpy(x), labels


def samples_between(root: str, shards: list[ShardInfo], lo: int,
                    hi: int) -> Iterator[ShardSample]:
    """Samples lo..hi-1 of the sequence the `shards` (in this order, in folder `root`) hold,
    reading only the shards that range touches."""
    offset = 0
    for shard in shards:
        a, b = max(lo, offset) - offset, min(hi, offset + shard.count) - offset
        if a < b:
            yield from read_shard(storage.join(root, shard.name), shard).samples(a, b)
        offset += shard.count


def in_chunks(samples: Iterator[ShardSample], size: int) -> Iterator[list[ShardSample]]:
    """Consecutive lists of `size` samples; the last may be shorter."""
    chunk: list[ShardSample] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_images(chunk: list[ShardSample], image_shape: tuple[int, int, int]) -> np.ndarray:
    """The samples' images as uint8 levels [B, C, H, W], each checked to be `image_shape`."""
    channels, height, width = image_shape
    x = np.empty((len(chunk), height, width, channels), dtype=np.uint8)
    for i, sample in enumerate(chunk):
        image = decode_sample(sample)
        if image.shape != x.shape[1:]:
            raise ShardError(sample.location, f"sample {sample.key} is {image.shape}, "
                                              f"expected {x.shape[1:]}")
        x[i] = image
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _RankStream(IterableDataset):
    """Runs a plan in the current process: as loader worker k of n, or alone."""

    def __init__(self, plan: _Plan):
        self.plan = plan

    def __iter__(self) -> Iterator[Batch | _WorkerError]:
        info = get_worker_info()
        if info is None:
            yield from self.plan.batches_of(0, 1)
            return
        try:
            yield from self.plan.batches_of(info.id, info.num_workers)
        except DataPrepError as exc:  # re-raised by the main process with its message intact
            yield _WorkerError(str(exc))


@dataclass(frozen=True)
class _WorkerError:
    """A DataPrepError raised in a loader worker, passed to the main process as a batch."""

    message: str


def _buffer_shuffle(samples: Iterator[ShardSample], size: int,
                    rng: np.random.Generator) -> Iterator[ShardSample]:
    """Shuffle a stream through a buffer of `size` samples (as webdataset's `shuffle`)."""
    buffer: list[ShardSample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            j = rng.integers(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
