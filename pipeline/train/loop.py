"""The training loop of one process, free of Ray.

The train stage runs `train` in every Ray Train worker (see `distributed.py`); a Tune trial
can run it in-process with `WorkerInfo()` and a reporter that calls `ray.tune.report`.

Per epoch: train on this rank's shards (DDP averages the gradients), evaluate the whole test
split every `eval_every` epochs (all ranks share it), then call `report(metrics, checkpoint_dir)`
on every rank — rank 0 passes a checkpoint folder on evaluated epochs, the others None. The
folder is temporary: the reporter must persist it before returning.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_prep import Manifest, make_loader
from flows.config import ModelConfig
from pipeline.train import checkpoint
from pipeline.train.config import FaultInjection, TrainConfig
from pipeline.train.ddp import WorkerInfo, all_reduce_sum, gather_digests
from pipeline.train.evaluation import evaluate, save_samples
from pipeline.train.seeding import derive_seed, seed_all
from pipeline.train.state import TrainState, build_state
from pipeline.train.tracker import MlflowTracker

Metrics = dict[str, float]
Reporter = Callable[[Metrics, Path | None], None]


class NonFiniteLossError(RuntimeError):
    """The loss or gradient stayed non-finite for `max_nonfinite_steps` steps in a row."""


class InjectedFault(RuntimeError):
    """A failure raised on purpose by `fault_injection.fail_at_steps`."""


@dataclass(frozen=True)
class TrainJob:
    """Where one training run reads and writes (plain values: it crosses into Ray workers)."""

    manifest_path: str
    run_dir: str | None = None  # folder shared by all attempts of the run (fault markers)
    tracking_uri: str | None = None  # MLflow; rank 0 logs when this and mlflow_run_id are set
    mlflow_run_id: str | None = None
    bundle_meta: dict[str, Any] = field(default_factory=dict)  # extra meta.json entries
    verbose: bool = True  # rank 0 prints one line per epoch


@dataclass
class _EpochTally:
    """Running sums of one epoch on one rank."""

    bpd_sum: float = 0.0
    finite_steps: int = 0
    grad_norm_sum: float = 0.0
    batches: int = 0
    data_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)


@dataclass
class _Run:
    """What every part of one worker's run reads (the mutable state lives in TrainState)."""

    cfg: TrainConfig
    job: TrainJob
    world: WorkerInfo
    manifest: Manifest
    report: Reporter
    tracker: MlflowTracker | None = None


def resolve_model_config(cfg: TrainConfig, manifest: Manifest) -> ModelConfig:
    """The configured model with the dataset's image shape and levels (and bf16 nets if amp)."""
    update: dict[str, Any] = {
        "image_shape": tuple(manifest.image_shape),
        "n_bins": manifest.n_bins,
    }
    if cfg.amp:
        update["net_dtype"] = "bfloat16"
    return cfg.model.model_copy(update=update)


def train_step(state: TrainState, y: torch.Tensor, cfg: TrainConfig) -> tuple[float, float]:
    """One optimiser step on dequantized images y; returns (this rank's mean bpd, grad norm).

    A non-finite gradient norm (the same on every rank after DDP's all-reduce, so every rank
    decides alike) skips the update; `max_nonfinite_steps` of them in a row raise.
    """
    state.step += 1
    state.optimizer.zero_grad(set_to_none=True)
    loss = _inject_nan(state.objective(y).mean(), state.step, cfg.fault_injection)
    loss.backward()
    max_norm = cfg.optim.grad_clip or math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        _skip_step(state, cfg)
        return float(loss.detach()), grad_norm
    state.nonfinite_in_row = 0
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model)
    return float(loss.detach()), grad_norm


def _skip_step(state: TrainState, cfg: TrainConfig) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    state.skipped += 1
    state.nonfinite_in_row += 1
    if state.nonfinite_in_row >= cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"non-finite loss/gradient at step {state.step}: {state.nonfinite_in_row} steps in "
            f"a row (max_nonfinite_steps={cfg.max_nonfinite_steps}), {state.skipped} skipped in "
            "total; lower optim.lr, raise optim.warmup_steps or set optim.grad_clip"
        )


def _inject_nan(loss: torch.Tensor, step: int, faults: FaultInjection) -> torch.Tensor:
    persistent = faults.nan_from_step is not None and step >= faults.nan_from_step
    if step in faults.nan_at_steps or persistent:
        return loss * float("nan")  # keeps the graph: the gradients become NaN too
    return loss


def _maybe_fail(faults: FaultInjection, step: int, world: WorkerInfo, job: TrainJob) -> None:
    """Raise once at each `fail_at_steps` on `fail_rank`; a marker file makes it once per run."""
    if step not in faults.fail_at_steps or world.rank != faults.fail_rank:
        return
    if job.run_dir is None:
        raise ValueError("fault_injection.fail_at_steps needs a run_dir for its marker files")
    marker = Path(job.run_dir) / f"fault_injected_step{step}_rank{world.rank}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise InjectedFault(f"injected failure at step {step} on rank {world.rank}")


def _run_epoch(state: TrainState, run: _Run) -> Metrics:
    """Train one epoch on this rank's shards; returns the epoch's metrics (all ranks' means)."""
    cfg, world, tracker = run.cfg, run.world, run.tracker
    epoch = state.epoch + 1
    loader = _train_loader(cfg, run.manifest, world, epoch)
    seed_all(derive_seed(cfg.seed, "train", world.rank, epoch))
    device = torch.device(world.device)
    tally = _EpochTally()
    mark = time.perf_counter()
    for x, _ in loader:
        tally.data_s += time.perf_counter() - mark
        _maybe_fail(cfg.fault_injection, state.step + 1, world, run.job)
        y = state.model.dequantize(x.to(device, non_blocking=True))
        if cfg.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        bpd, grad_norm = train_step(state, y, cfg)
        _tally_step(tally, bpd, grad_norm)
        if state.step1_digests is None:
            state.step1_digests = gather_digests(state.model, world)
        if tracker is not None and state.step % cfg.log_every == 0:
            tracker.add(_step_metrics(state, bpd, grad_norm), state.step)
        mark = time.perf_counter()
    images = tally.batches * (cfg.batch_size // world.world_size) * world.world_size
    return _epoch_metrics(state, tally, world, images)


def _train_loader(cfg: TrainConfig, manifest: Manifest, world: WorkerInfo, epoch: int):
    if cfg.batch_size % world.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} (global) is not divisible by {world.world_size} workers"
        )
    return make_loader(
        manifest,
        "train",
        cfg.batch_size // world.world_size,
        rank=world.rank,
        world_size=world.world_size,
        num_workers=cfg.loader_workers,
        seed=cfg.seed,
        epoch=epoch,
        mode="train",
    )


def _tally_step(tally: _EpochTally, bpd: float, grad_norm: float) -> None:
    tally.batches += 1
    if math.isfinite(bpd) and math.isfinite(grad_norm):
        tally.bpd_sum += bpd
        tally.grad_norm_sum += grad_norm
        tally.finite_steps += 1


def _step_metrics(state: TrainState, bpd: float, grad_norm: float) -> Metrics:
    """Per-step MLflow metrics (rank 0's batch)."""
    return {
        "step/train_bpd": bpd,
        "step/grad_norm": grad_norm,
        "step/lr": state.lr,
        "step/skipped_steps": float(state.skipped),
    }


def _epoch_metrics(
    state: TrainState, tally: _EpochTally, world: WorkerInfo, images: int
) -> Metrics:
    elapsed = time.perf_counter() - tally.started
    bpd_sum, finite, norm_sum = all_reduce_sum(
        [tally.bpd_sum, tally.finite_steps, tally.grad_norm_sum], world
    )
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "train_bpd": bpd_sum / finite if finite else math.nan,
        "grad_norm": norm_sum / finite if finite else math.nan,
        "lr": state.lr,
        "skipped_steps": state.skipped,
        "images_per_s": images / elapsed if elapsed > 0 else math.nan,
        "epoch_s": elapsed,  # rank 0's wall time of the epoch's training part
        "data_s": tally.data_s,  # ... of it waiting for batches
        "cpu_s": time.process_time() - tally.cpu_started,  # rank 0's process CPU time
    }


def _first_batch(cfg: TrainConfig, manifest: Manifest, world: WorkerInfo) -> torch.Tensor | None:
    """Rank 0's first training batch (the data-dependent initialisation batch)."""
    if not world.is_chief:
        return None
    return next(iter(_train_loader(cfg, manifest, world, epoch=1)))[0]


def _configure_torch(cfg: TrainConfig, world: WorkerInfo) -> None:
    if world.threads:
        torch.set_num_threads(world.threads)
    if torch.device(world.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32


def _open_tracker(job: TrainJob, world: WorkerInfo) -> MlflowTracker | None:
    if not world.is_chief or not (job.tracking_uri and job.mlflow_run_id):
        return None
    return MlflowTracker(job.tracking_uri, job.mlflow_run_id)


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
    _configure_torch(cfg, world)
    manifest = Manifest.load(job.manifest_path)
    model_cfg = resolve_model_config(cfg, manifest)
    init_x = None if resume else _first_batch(cfg, manifest, world)
    state = build_state(cfg, model_cfg, world, init_x, resume)
    run = _Run(cfg, job, world, manifest, report, _open_tracker(job, world))
    try:
        if resume is None and cfg.eval_at_start:
            _evaluate_start(state, run)
        while state.epoch < cfg.epochs:
            metrics = _run_epoch(state, run)
            state.epoch += 1
            _finish_epoch(state, run, metrics)
    except BaseException:
        _flush_quietly(run.tracker)  # keep the steps logged before the failure
        raise
    return summarize(state)


def _flush_quietly(tracker: MlflowTracker | None) -> None:
    if tracker is None:
        return
    try:
        tracker.flush()
    except Exception as err:  # noqa: BLE001 - never mask the error that stopped training
        print(f"[train] could not flush MLflow metrics: {err}", flush=True)


def _evaluate_start(state: TrainState, run: _Run) -> None:
    test_bpd = _evaluate(state, run)
    state.history.append({"epoch": 0, "step": 0, "test_bpd": test_bpd})
    if run.tracker is not None:
        run.tracker.add({"test_bpd": test_bpd}, step=0)
    _print_line(state, run, state.history[-1])


def _evaluate(state: TrainState, run: _Run, k: int = 1) -> float:
    cfg, world = run.cfg, run.world
    batch = max((cfg.eval_batch_size or cfg.batch_size) // world.world_size, 1)
    return evaluate(state.eval_model, run.manifest, world, batch_size=batch, seed=cfg.seed, k=k)


def _finish_epoch(state: TrainState, run: _Run, metrics: Metrics) -> None:
    """Evaluate when due, log, checkpoint (rank 0) and report (every rank, equally often).

    Metrics reach MLflow before the report commits the checkpoint: a failure in between
    replays the epoch, and the tracker drops the (metric, step) pairs it already holds.
    """
    cfg = run.cfg
    evaluated = state.epoch % cfg.eval_every == 0 or state.epoch == cfg.epochs
    if evaluated:
        metrics["test_bpd"] = _evaluate(state, run)
    if state.epoch == cfg.epochs and not state.model.exact and cfg.eval_k > 1:
        metrics["test_bpd_iwae"] = _evaluate(state, run, k=cfg.eval_k)
    state.history.append(metrics)
    _print_line(state, run, metrics)
    with _checkpoint_dir(state, run, metrics, evaluated) as ckpt:
        if run.tracker is not None:
            logged = {k: v for k, v in metrics.items() if k not in ("epoch", "step")}
            run.tracker.add(logged, state.epoch)
            if ckpt is not None:
                run.tracker.log_files(sorted((ckpt / "samples").glob("*.png")), "samples")
            run.tracker.flush()
        run.report(metrics, ckpt)


@contextlib.contextmanager
def _checkpoint_dir(
    state: TrainState, run: _Run, metrics: Metrics, evaluated: bool
) -> Iterator[Path | None]:
    """Rank 0, evaluated epoch: a temporary checkpoint folder (bundle, state, samples)."""
    if not (run.world.is_chief and evaluated):
        yield None
        return
    from flows.io import save_model

    cfg = run.cfg
    with tempfile.TemporaryDirectory(prefix="nfpipe-ckpt-") as tmp:
        folder = Path(tmp)
        meta = {**run.job.bundle_meta, "epoch": state.epoch, "step": state.step,
                "test_bpd": metrics["test_bpd"], "run_id": run.job.mlflow_run_id}
        save_model(state.eval_model, checkpoint.model_bundle(folder), meta)
        checkpoint.save_state(folder, state.snapshot())
        save_samples(state.eval_model, folder / "samples", epoch=state.epoch,
                     temperatures=cfg.sample_temperatures, n=cfg.sample_n, seed=cfg.seed,
                     device=run.world.device)
        yield folder


def _print_line(state: TrainState, run: _Run, m: Metrics) -> None:
    """One progress line per epoch, rank 0 only."""
    if not (run.world.is_chief and run.job.verbose):
        return
    cfg = run.cfg
    speed = f"{m['images_per_s']:8.1f} img/s" if "images_per_s" in m else " " * 14
    train_bpd = f"train {m['train_bpd']:.4f}" if "train_bpd" in m else " " * 12
    test_bpd = f"test {m['test_bpd']:.4f}" if "test_bpd" in m else ""
    line = (f"[train] epoch {state.epoch}/{cfg.epochs} step {state.step} {speed} "
            f"{train_bpd} {test_bpd} bpd (skipped {state.skipped})")
    # the process's own stdout: Ray Train's patched print would also tee a wrapped
    # sys.stdout (MLflow wraps it on rank 0) and show every line twice
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


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
    }
