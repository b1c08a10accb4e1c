"""The training loop of one process, free of Ray; `train()` reads top to bottom.

Every Ray Train worker runs `train` (see `distributed.py`); a Tune trial runs it in-process
with `WorkerInfo()` and Tune's reporter. Per epoch: train on this rank's shards (DDP averages
the gradients), evaluate the whole val split every `eval_every` epochs (all ranks share it;
the best checkpoint and Tune (ASHA's stops too) choose on it; the test split is scored once, for the
chosen model, by the evaluate stage),
then call `report(metrics, checkpoint_dir)` on every rank, rank 0 passing a checkpoint folder
on evaluated epochs and the others None. The folder is temporary: the reporter persists it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_prep import Manifest, make_loader
from flows.bpd import check_levels
from flows.config import ModelConfig
from flows.io import save_model
from tracking import MlflowTracker, epoch_metrics
from train import checkpoint
from train.compile_cache import use_compile_cache
from train.config import TrainConfig, per_worker_batch
from train.ddp import WorkerInfo, all_gather_cat, all_reduce_sum, gather_digests
from train.evaluation import evaluate, save_samples
from train.guard import NonFiniteLossError as NonFiniteLossError  # raised by the guard
from train.hooks import NO_HOOKS, TrainHooks
from train.reporting import Metrics, Reporter
from train.seeding import derive_seed, seed_all
from train.state import TrainState, build_state
from train.step_graph import make_step


@dataclass(frozen=True)
class TrainJob:
    """Where one training run reads and writes (plain values: it crosses into Ray workers)."""

    manifest_path: str
    run_dir: str | None = None  # folder shared by all attempts of the run (fault markers)
    tracking_uri: str | None = None  # MLflow; rank 0 logs when this and mlflow_run_id are set
    mlflow_run_id: str | None = None
    bundle_meta: dict[str, Any] = field(default_factory=dict)  # extra meta.json entries
    verbose: bool = True  # rank 0 prints one line per epoch
    progress_file: str | None = None  # rank 0 appends one JSON line per epoch (driver's bar)
    hooks: TrainHooks = field(default_factory=TrainHooks)  # fault injection in tests


def train(
    cfg: TrainConfig,
    job: TrainJob,
    world: WorkerInfo,
    report: Reporter,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train from scratch or from `resume` (a `checkpoint.load_state` dict) to `cfg.epochs`.

    Returns a JSON-friendly summary: epochs done, the per-epoch history, the final metrics
    and every rank's weight digest after step 1. Raises NonFiniteLossError on divergence.
    """
    configure_torch(cfg, world)
    device = torch.device(world.device)
    manifest = Manifest.load(job.manifest_path)
    manifest.require_split("val")
    model_cfg = resolve_model_config(cfg, manifest)
    init_x = None if resume else init_batch(cfg, manifest, world)
    state = build_state(cfg, model_cfg, world, init_x, resume)
    step = make_step(state, cfg, world, job.hooks, train_step)  # CUDA-graphed if configured
    tracker = open_tracker(job, world)
    try:
        if resume is None and cfg.eval_at_start:  # epoch 0: the initialised model
            bpd = score_val_split(state, cfg, manifest, world)
            metrics = {"epoch": 0, "step": 0, "val_bpd": bpd}
            state.history.append(metrics)
            log_epoch(tracker, metrics, step=0)
            print_epoch(job, world, cfg, state, metrics)
        while state.epoch < cfg.epochs:
            epoch = state.epoch + 1
            seed_all(derive_seed(cfg.seed, "train", world.rank, epoch))
            tally = EpochTally()
            for x, _ in train_loader(cfg, manifest, world, epoch):
                tally.waited()
                job.hooks.before_step(state.step + 1, world, job.run_dir)
                x = to_device(x, device, manifest.n_bins)
                bpd, grad_norm = step(x)
                tally.add(bpd, grad_norm)
                if state.step1_digests is None:
                    state.step1_digests = gather_digests(state.model, world)
                if state.step % cfg.log_every == 0:  # the step's only host syncs are here
                    state.check_finite()
                    if tracker is not None:
                        tracker.add(step_metrics(state, bpd, grad_norm), state.step)
            state.check_finite()
            metrics = tally.summary(state, world, cfg.batch_size)
            state.epoch = epoch
            evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
            if evaluated:
                metrics["val_bpd"] = score_val_split(state, cfg, manifest, world)
            if epoch == cfg.epochs and cfg.eval_k > 1:  # the k-draw bound, beside k = 1
                metrics[f"val_bpd_k{cfg.eval_k}"] = score_val_split(state, cfg, manifest,
                                                                    world, k=cfg.eval_k)
            state.history.append(metrics)
            print_epoch(job, world, cfg, state, metrics)
            # metrics reach MLflow before the report commits the checkpoint: a failure in
            # between replays the epoch, and the tracker drops the steps it already holds
            with checkpoint_dir(state, cfg, job, world, metrics, evaluated) as ckpt:
                log_epoch(tracker, metrics, epoch, ckpt)
                report(metrics, ckpt)
    except BaseException:
        flush_quietly(tracker)  # keep the steps logged before the failure
        raise
    return summarize(state)


def train_step(state: TrainState, x: torch.Tensor, cfg: TrainConfig,
               hooks: TrainHooks = NO_HOOKS,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on integer levels x; returns (this rank's mean bpd, grad norm) as
    0-dim tensors on the device: nothing here waits for the device (no `.item()`).

    `noise` fixes the dequantisation noise (tests); else the objective draws it. A non-finite
    gradient norm (the same on every rank after DDP's all-reduce, so every rank decides alike)
    skips the update, on the device (`train.guard`); `state.check_finite()` raises once
    `max_nonfinite_steps` of them came in a row.
    """
    state.step += 1
    state.optimizer.zero_grad(set_to_none=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    loss = hooks.loss(state.objective(x, noise=noise).mean(), state.step)
    loss.backward()
    max_norm = cfg.optim.grad_clip or math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm, foreach=True)
    skipped = state.guard.step(state.optimizer, grad_norm)
    # warmup counts attempted steps (the host never reads `skipped`); the lr is a device
    # tensor that the scheduler fills without a sync
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model, skipped)
    return loss.detach(), grad_norm.detach()


def to_device(x: torch.Tensor, device: torch.device, n_bins: int) -> torch.Tensor:
    """A host batch of levels on `device`: checked here (the objective does not read a
    device tensor's values), copied from pinned memory without blocking the host."""
    check_levels(x, n_bins)
    if device.type == "cuda" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def resolve_model_config(cfg: TrainConfig, manifest: Manifest) -> ModelConfig:
    """The configured model with the dataset's image shape and levels (and bf16 nets if amp)."""
    update: dict[str, Any] = {
        "image_shape": tuple(manifest.image_shape),
        "n_bins": manifest.n_bins,
    }
    if cfg.amp:
        update["net_dtype"] = "bfloat16"
    return cfg.model.model_copy(update=update)


def configure_torch(cfg: TrainConfig, world: WorkerInfo) -> None:
    """Threads; the node's compile cache when compiling; on a GPU: TF32 as configured, and
    cuDNN's autotuner (every step has the same shapes, so the fastest convolution
    algorithms are found once and reused)."""
    if world.threads:
        torch.set_num_threads(world.threads)
    if cfg.compile:
        use_compile_cache()
    if torch.device(world.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True


def train_loader(cfg: TrainConfig, manifest: Manifest, world: WorkerInfo, epoch: int):
    """This rank's shuffled batches of the train split (batch_size is the global batch)."""
    batch = per_worker_batch(cfg.batch_size, world.world_size, workers_name="world size")
    return make_loader(manifest, "train", batch, rank=world.rank,
                       world_size=world.world_size, num_workers=cfg.loader_workers,
                       seed=cfg.seed, epoch=epoch, mode="train", prefetch=cfg.loader_prefetch,
                       pin_memory=torch.device(world.device).type == "cuda")


def init_batch(cfg: TrainConfig, manifest: Manifest, world: WorkerInfo) -> torch.Tensor | None:
    """The data-dependent initialisation images on rank 0 (None elsewhere): `init_images`
    images taken from the start of every rank's first epoch, an equal share per rank (more
    than one batch when a rank's batch is smaller), gathered to rank 0. A collective: every
    rank calls it."""
    share = -(-cfg.init_images // world.world_size)
    taken, count = [], 0
    for x, _ in train_loader(cfg, manifest, world, epoch=1):
        taken.append(x[: share - count])
        count += taken[-1].shape[0]
        if count == share:
            break
    # every rank sees the same number of full batches, so the shares have one shape
    images = all_gather_cat(torch.cat(taken).to(world.device), world)
    return images if world.is_chief else None


def score_val_split(state: TrainState, cfg: TrainConfig, manifest: Manifest,
                    world: WorkerInfo, k: int = 1) -> float:
    """Bits/dim of the evaluated weights (EMA when kept) over the whole val split."""
    batch = max((cfg.eval_batch_size or cfg.batch_size) // world.world_size, 1)
    return evaluate(state.eval_model, manifest, world, batch_size=batch, seed=cfg.seed,
                    split="val", k=k).bpd


@dataclass
class EpochTally:
    """Running sums of one epoch on one rank, kept on the device (read once, at the end)."""

    sums: torch.Tensor | None = None  # float64 [Σ bpd, finite steps, Σ grad norm]
    batches: int = 0
    data_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    _mark: float = field(default_factory=time.perf_counter)

    def waited(self) -> None:
        """A batch arrived: count the time since the last step as waiting for data."""
        self.data_s += time.perf_counter() - self._mark

    def add(self, bpd: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a step; its bpd and grad norm only when both are finite."""
        self.batches += 1
        finite = torch.isfinite(bpd) & torch.isfinite(grad_norm)
        row = torch.stack([bpd, finite, grad_norm]).to(torch.float64)
        row = torch.where(finite, row, 0.0)
        self.sums = row if self.sums is None else self.sums + row
        self._mark = time.perf_counter()

    def summary(self, state: TrainState, world: WorkerInfo, global_batch: int) -> Metrics:
        """The epoch's metrics: train bpd and grad norm averaged over all ranks' finite steps."""
        elapsed = time.perf_counter() - self.started
        sums = [0.0, 0.0, 0.0] if self.sums is None else self.sums.tolist()
        bpd_sum, finite, norm_sum = all_reduce_sum(sums, world)
        images = self.batches * (global_batch // world.world_size) * world.world_size
        return {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_bpd": bpd_sum / finite if finite else math.nan,
            "grad_norm": norm_sum / finite if finite else math.nan,
            "lr": state.lr,
            "skipped_steps": state.skipped,
            "images_per_s": images / elapsed if elapsed > 0 else math.nan,
            "epoch_s": elapsed,  # rank 0's wall time of the epoch's training part
            "data_s": self.data_s,  # ... of it waiting for batches
            "cpu_s": time.process_time() - self.cpu_started,  # rank 0's process CPU time
        }


def step_metrics(state: TrainState, bpd: torch.Tensor, grad_norm: torch.Tensor) -> Metrics:
    """Per-step MLflow metrics (rank 0's batch), read from the device."""
    return {
        "step/train_bpd": float(bpd),
        "step/grad_norm": float(grad_norm),
        "step/lr": state.lr,
        "step/skipped_steps": float(state.skipped),
    }


@contextlib.contextmanager
def checkpoint_dir(state: TrainState, cfg: TrainConfig, job: TrainJob, world: WorkerInfo,
                   metrics: Metrics, evaluated: bool) -> Iterator[Path | None]:
    """Rank 0, evaluated epoch: a temporary checkpoint folder (bundle, state, samples)."""
    if not (world.is_chief and evaluated):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="nfpipe-ckpt-") as tmp:
        folder = Path(tmp)
        meta = {**job.bundle_meta, "epoch": state.epoch, "step": state.step,
                "val_bpd": metrics["val_bpd"], "run_id": job.mlflow_run_id}
        save_model(state.eval_model, checkpoint.model_bundle(folder), meta)
        checkpoint.save_state(folder, state.snapshot())
        save_samples(state.eval_model, folder / "samples", temperatures=cfg.sample_temperatures,
                     n=cfg.sample_n, seed=cfg.seed, prefix=f"samples_epoch{state.epoch:03d}")
        yield folder


def open_tracker(job: TrainJob, world: WorkerInfo) -> MlflowTracker | None:
    """Rank 0's MLflow writer, when the job names a run."""
    if not world.is_chief or not (job.tracking_uri and job.mlflow_run_id):
        return None
    return MlflowTracker(job.tracking_uri, job.mlflow_run_id)


def log_epoch(tracker: MlflowTracker | None, metrics: Metrics, step: int,
              ckpt: Path | None = None) -> None:
    """The epoch's metrics (and the checkpoint's sample grids) into MLflow, flushed."""
    if tracker is None:
        return
    tracker.add(epoch_metrics({k: v for k, v in metrics.items() if k not in ("epoch", "step")}),
                step)
    if ckpt is not None:
        tracker.log_images(sorted((ckpt / "samples").glob("*.png")), step)
    tracker.flush()


def flush_quietly(tracker: MlflowTracker | None) -> None:
    if tracker is None:
        return
    try:
        tracker.flush()
    except Exception as err:  # noqa: BLE001 - never mask the error that stopped training
        print(f"[train] could not flush MLflow metrics: {err}", flush=True)


def print_epoch(job: TrainJob, world: WorkerInfo, cfg: TrainConfig, state: TrainState,
                m: Metrics) -> None:
    """One progress line per epoch, rank 0 only: printed, and/or appended as JSON to
    `job.progress_file` (the driver draws its progress bar from it)."""
    if not world.is_chief:
        return
    if job.progress_file:
        append_progress(Path(job.progress_file), cfg.epochs, m)
    if not job.verbose:
        return
    speed = f"{m['images_per_s']:8.1f} img/s" if "images_per_s" in m else " " * 14
    train_bpd = f"train {m['train_bpd']:.4f}" if "train_bpd" in m else " " * 12
    val = f"val {m['val_bpd']:.4f}" if "val_bpd" in m else ""
    line = (f"[train] epoch {state.epoch}/{cfg.epochs} step {state.step} {speed} "
            f"{train_bpd} {val} bpd (skipped {state.skipped})")
    # the process's own stdout: Ray Train's patched print would also tee a wrapped
    # sys.stdout (MLflow wraps it on rank 0) and show every line twice
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


def append_progress(path: Path, epochs: int, metrics: Metrics) -> None:
    """One JSON line: the epoch's number, the run's total, and its bits/dim."""
    keep = {k: metrics[k] for k in ("epoch", "step", "train_bpd", "val_bpd") if k in metrics}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({**keep, "epochs": epochs, "time": time.time()}) + "\n")


def summarize(state: TrainState) -> dict[str, Any]:
    """What the run returns to its driver (JSON-friendly)."""
    return {
        "status": "ok",
        "epochs_done": state.epoch,
        "step": state.step,
        "skipped_steps": state.skipped,
        "resumes": state.resumes,
        "history": state.history,
        "final": state.history[-1] if state.history else {},
        "step1_digests": state.step1_digests,
        "init_digests": state.init_digests,
        "init_images": state.init_images,
    }
