"""What the GPU does with the Glow CIFAR recipe, in one command (`make gpu-check`), within
8 minutes on one GPU.

The recipe: the `cifar10` profile's model (pipeline.yaml: Glow, L=3, K=32, hidden 512, affine
couplings) on 3x32x32 images, Adamax (Glow's), the real training step (`train.state.build_state`
and `train.step_graph.make_step` over `train.loop.train_step`), TF32 allowed, on smooth
synthetic CIFAR-like images. Rows, in this order (compiles last), each at batch 64 (the
per-GPU batch of openai/glow's 8-GPU run) and 512 (its global batch) unless said.

Row (`--rows` name): what it runs; expected time on an H200 at the step times measured on
2026-11-30 (0.3-0.4 s per step at batch 64; batch 512 not measured then, assumed 8x):
- fp32: fp32 (TF32) eager; ~11 s at 64, ~30 s at 512.
- bf16+cl: bf16 autocast of the coupling nets (`train.amp`) + channels_last, eager; ~13 s,
  ~35 s.
- graph: bf16+cl eager captured in a CUDA graph (`train.cuda_graphs`); ~13 s, ~35 s (an
  instant "failed" row while the step still keeps its learning rate in a Python float).
- share: 4 trials sharing the GPU (4 processes, as Tune's `gpus_per_trial: 0.25`) against the
  first of them alone, aggregate images/s; bf16+cl eager, batch 64 only; ~55 s.
- compile: bf16+cl + `torch.compile` (`train.compile`), batch 512 only; ~215 s (a cold
  inductor compile took 193 s).
- compile+graph: the compiled step captured in a CUDA graph, batch 512, reusing the compile
  row's compiled objective; ~15 s.
Timed steps: 1024 images per row, at least 6 (16 at batch 64, 6 at 512), after 3 warm-up
steps (4 with a CUDA graph: 3 eager, then the capture); 2 profiled steps at 64, 1 at 512.

Before the rows (~25 s): the environment (GPU, CUDA, cuDNN, NCCL, torch), the measured matmul
peaks, and a same-weights bf16 vs fp32 check: one batch, one set of weights (after 10 fp32
steps, since Glow zero-initialises its nets' last convolutions), one noise draw; the bf16 loss
within 0.5% of the fp32 loss (TF32 off) and the gradients within 5% (relative L2 error over
all parameters). About 7.5 minutes in all (estimated, not yet timed on a GPU; faster steps
make it shorter).

Each row reports images/s and ms per step (timed steps after untimed warm-up steps), MFU (model
FLOPs per image, counted by `torch.utils.flop_counter` from the conv/matmul shapes of one
forward and backward, times images/s, over the GPU's data-sheet dense peak of the row's dtype:
gpu_metrics.PEAK_TFLOPS, e.g. H200 bf16 989, TF32 494, fp32 67 TFLOP/s; the measured matmul
peak where the GPU is not in the table), peak memory, kernels per step and the device-busy
fraction: the device time per step in which some kernel ran, from torch.profiler's kernel
events (merged where they overlap; no annotation spans) over 1-2 profiled steps, divided by
the unprofiled step time.

The JSON is rewritten (atomically) after every row, so a run cut off by its time limit still
reports what it measured. `--time-limit` (seconds from the start; 450 by default) skips rows
whose estimated time (steps at the per-image time already measured, plus 200 s for a cold
compile) would not fit, marked "skipped (time limit)"; a row already running is not cut, so
leave the outer limit a minute above it. `--pipeline` adds issue 11's one-epoch
`nfpipe run --profile cifar10` on the GPU and CPU scoring of its champion (about 2 minutes,
after the rows, if it fits).

`--device cpu --smoke` runs the same code on a tiny Glow (L=2, K=2, hidden 16; 3x16x16; batches
16 and 64) in seconds: the rows that need CUDA say "not run on cpu", torch.compile is not run
(minutes of C++ compiling on a CPU; tests/train/test_compile.py covers it), and the sharing row
runs 2 trial processes together against the first alone (each process costs seconds of
imports on a small CI box).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--time-limit 450] [--json PATH]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from bench_flows import host_info, loadavg, mm_peak, run_steps, synchronize  # noqa: E402
from bench_shards import synthetic_images, write_archive  # noqa: E402
from gpu_metrics import (  # noqa: E402
    PEAK_TFLOPS,
    device_busy,
    flops_per_image,
    peak_flops,
    profile_steps,
)

from data_prep import Manifest, make_loader  # noqa: E402
from flows import build_model  # noqa: E402
from pipeline.records import write_json_atomic  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.ddp import WorkerInfo  # noqa: E402
from train.hooks import NO_HOOKS  # noqa: E402
from train.loop import configure_torch, train_step  # noqa: E402
from train.state import TrainState, build_state  # noqa: E402
from train.step_graph import WARMUP_STEPS, make_step  # noqa: E402

CIFAR = (3, 32, 32)
RECIPE = {"name": "glow", "levels": 3, "steps": 32, "hidden": 512, "coupling": "affine"}
SMOKE_RECIPE = {"name": "glow", "levels": 2, "steps": 2, "hidden": 16, "coupling": "affine"}
OPTIM = {"name": "adamax", "lr": 1e-3, "warmup_steps": 50}  # Glow's optimiser, short warm-up
LOSS_TOL, GRAD_TOL = 0.005, 0.05  # same-weights bf16 vs fp32: relative loss, relative L2 grads
TRAINED_STEPS = 10  # fp32 steps before that check, so the nets' outputs are not all zero
COMPILE_S = 200.0  # a cold inductor compile of the recipe on an H200 took 193 s (RESULTS.md)
TRIAL_START_S = {"cuda": 20.0, "cpu": 2.0}  # a trial process: imports, CUDA, model, init
SHARED_TRIALS = 4
SMOKE_SHARED_TRIALS = 2  # on a 2-core CI box each trial process costs ~3 s of imports
CPU_ONLY_NOTE = "not run on cpu"


@dataclass(frozen=True)
class Row:
    """One line of the table: a variant of the training step at one batch size."""

    kind: str  # fp32 | bf16+cl | graph | share | compile | compile+graph
    batch: int
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind} @{self.batch}"

    def cpu_skip(self) -> str | None:
        """Why this row does not run on a CPU (None: it does)."""
        if self.compile:
            return (f"{CPU_ONLY_NOTE}: torch.compile is minutes of C++ compiling on a CPU; "
                    "tests/train/test_compile.py checks it")
        if self.cuda_graphs:
            return (f"{CPU_ONLY_NOTE}: CUDA graphs need a GPU; tests/train/test_step_graph.py "
                    "checks the replay logic")
        return None


KINDS = ["fp32", "bf16+cl", "graph", "share", "compile", "compile+graph"]


def plan(small: int, large: int) -> list[Row]:
    """The rows in the order they run: eager, graphs, sharing, then the compiles."""
    bf16cl = {"amp": True, "channels_last": True}
    return [Row("fp32", small), Row("fp32", large),
            Row("bf16+cl", small, **bf16cl), Row("bf16+cl", large, **bf16cl),
            Row("graph", small, **bf16cl, cuda_graphs=True),
            Row("graph", large, **bf16cl, cuda_graphs=True),
            Row("share", small, **bf16cl),
            Row("compile", large, **bf16cl, compile=True),
            Row("compile+graph", large, **bf16cl, compile=True, cuda_graphs=True)]


# ------------------------------------------------------------------------------ environment

def environment(device: torch.device) -> dict:
    info = {**host_info(), "load": loadavg(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    nccl=".".join(map(str, torch.cuda.nccl.version())))
    else:
        info.update(gpu="none (CPU run)", cuda=torch.version.cuda or "none",
                    cudnn="n/a", nccl="n/a")
    return info


# ------------------------------------------------------------------------------- models

def batches(n_batches: int, batch: int, shape: tuple[int, int, int], device) -> list:
    """Smooth synthetic CIFAR-like uint8 images (bench_shards), cropped to `shape`."""
    images = torch.from_numpy(synthetic_images(n_batches * batch, seed=0))
    images = images.reshape(-1, *CIFAR)[:, :, : shape[1], : shape[2]].contiguous()
    return [x.to(device) for x in images.split(batch)]


def train_config(model: dict, row: Row, device: torch.device) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": model, "batch_size": row.batch, "optim": OPTIM, "amp": row.amp,
        "compile": row.compile, "cuda_graphs": row.cuda_graphs,
        "channels_last": row.channels_last, "tf32": True, "max_nonfinite_steps": 10**6,
        "scaling": {"num_workers": 1, "use_gpu": device.type == "cuda"}})


def new_state(cfg: TrainConfig, init_x: torch.Tensor, device: torch.device) -> TrainState:
    world = WorkerInfo(device=str(device))
    configure_torch(cfg, world)
    update = {"image_shape": tuple(init_x.shape[1:]), "n_bins": 256}
    if cfg.amp:
        update["net_dtype"] = "bfloat16"
    return build_state(cfg, cfg.model.model_copy(update=update), world, init_x=init_x)


@dataclass
class Run:
    """What the rows share: arguments, device, measured figures and the deadline."""

    args: argparse.Namespace
    device: torch.device
    model: dict
    shape: tuple[int, int, int]
    measured_peaks: dict
    deadline: float
    flops_per_image: float | None = None
    s_per_image: float | None = None  # the first eager row's, for the time estimates
    compiled: TrainState | None = None  # the compile row's state, reused by compile+graph

    @property
    def shared_trials(self) -> int:
        return SMOKE_SHARED_TRIALS if self.args.smoke else SHARED_TRIALS

    @property
    def gpu_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""

    def peak(self, row: Row) -> tuple[float, str]:
        dtype = "bf16" if row.amp else ("tf32" if self.device.type == "cuda" else "fp32")
        if self.device.type != "cuda":
            key = "bf16" if row.amp else "fp32"
            return self.measured_peaks[key], f"measured {key} matmul peak (CPU)"
        return peak_flops(self.gpu_name, dtype, self.measured_peaks)

    def steps(self, row: Row) -> tuple[int, int, int]:
        """(warm-up, timed, profiled) steps of a row."""
        args = self.args
        timed = args.steps or (max(6, 1024 // row.batch) if not args.smoke else 8)
        warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
        if row.cuda_graphs:
            warmup = max(warmup, WARMUP_STEPS + 1)  # the eager warm-up and the capture
        return warmup, timed, 1 if row.batch > 128 else 2


def measure(run: Run, row: Row) -> dict:
    """Train one row's variant from the recipe's initial weights; time, profile, count."""
    device = run.device
    warmup, timed, profiled = run.steps(row)
    data = batches(4, row.batch, run.shape, device)
    cfg = train_config(run.model, row, device)
    state = run.compiled if row.kind == "compile+graph" and run.compiled else \
        new_state(cfg, data[0], device)
    if run.flops_per_image is None:
        run.flops_per_image = flops_per_image(state.model, data[0][:8])
    step_fn = make_step(state, cfg, WorkerInfo(device=str(device)), NO_HOOKS, train_step)
    torch.manual_seed(1)  # the same dequantisation noise in every row

    def step(i: int) -> torch.Tensor:
        return step_fn(data[i % len(data)])[0]

    def sync() -> None:
        synchronize(device)

    warm_s, _ = run_steps(step, warmup, sync=sync)  # compiles and captures happen here
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed, losses = run_steps(step, timed, start=warmup, sync=sync)
    loss = float(losses[-1])  # a graphed step's outputs are overwritten: read the last only
    kernels = profile_steps(step, profiled, device, sync)
    if row.kind == "compile":
        run.compiled = state
    images_per_s = timed * row.batch / elapsed
    peak, peak_source = run.peak(row)
    return {"images_per_s": images_per_s, "ms_per_step": 1e3 * elapsed / timed,
            "mfu": run.flops_per_image * images_per_s / peak,
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else None),
            **kernels, "device_busy": device_busy(kernels["kernel_ms_per_step"],
                                                  1e3 * elapsed / timed),
            "warmup_steps": warmup, "timed_steps": timed, "profiled_steps": profiled,
            "warmup_s": warm_s, "gflop_per_image": run.flops_per_image / 1e9,
            "peak_tflops": peak / 1e12, "peak_source": peak_source,
            "loss": loss, "loss_finite": math.isfinite(loss)}


# ------------------------------------------------------------------- same-weights bf16 check

def bf16_vs_fp32(run: Run, batch: int) -> dict:
    """Loss and gradients of one batch with the same weights and noise, bf16 nets vs fp32
    (TF32 off for the reference): a precision bug shows here, training noise does not."""
    device = run.device
    x = batches(1, batch, run.shape, device)[0]
    cfg = train_config(run.model, Row("fp32", batch), device)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"warmup_steps": 0})})
    state = new_state(cfg, x, device)
    for _ in range(TRAINED_STEPS):  # Glow's zero-initialised last convs: the nets output 0
        train_step(state, x, cfg)
    fp32 = state.model
    bf16 = build_model(run.model | {"image_shape": run.shape, "n_bins": 256,
                                    "net_dtype": "bfloat16"}).to(device)
    bf16.load_state_dict(fp32.state_dict())
    noise = torch.rand(x.shape, generator=torch.Generator(device).manual_seed(0), device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        loss32, grads32 = loss_and_grads(fp32, x, noise)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    loss16, grads16 = loss_and_grads(bf16, x, noise)
    loss_rel = abs(loss16 - loss32) / abs(loss32)
    grad_rel = float((grads16 - grads32).norm() / grads32.norm())
    return {"batch": batch, "loss_fp32": loss32, "loss_bf16": loss16, "loss_rel": loss_rel,
            "grad_rel_l2": grad_rel, "loss_tol": LOSS_TOL, "grad_tol": GRAD_TOL,
            "agrees": loss_rel <= LOSS_TOL and grad_rel <= GRAD_TOL}


def loss_and_grads(model: torch.nn.Module, x: torch.Tensor,
                   noise: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The mean bits/dim of `x` under `noise` and its gradient, flattened (float64)."""
    model.zero_grad(set_to_none=True)
    loss = model(x, noise=noise).mean()
    loss.backward()
    loss = loss.detach()
    grads = torch.cat([p.grad.double().flatten() for p in model.parameters()
                       if p.grad is not None])
    return float(loss), grads


# ----------------------------------------------------------------------- trials sharing a GPU

def shared_trials(run: Run, row: Row, workdir: Path) -> dict:
    """Aggregate images/s of `run.shared_trials` trial processes training at once on the
    device, against the first of them training alone just before (all started together, so
    their start-up is paid once; each phase timed from a common start signal)."""
    _, timed, _ = run.steps(row)
    trials = run.shared_trials
    alone, shared = trial_processes(run, row, trials, timed, workdir / "share")
    peak, peak_source = run.peak(row)
    flops = run.flops_per_image or 0.0
    return {"images_per_s": shared["images_per_s"], "ms_per_step": shared["ms_per_step"],
            "mfu": flops * shared["images_per_s"] / peak, "peak_mem_gib": None,
            "kernels_per_step": None, "kernel_ms_per_step": None, "device_busy": None,
            "trials": trials, "single_images_per_s": alone["images_per_s"],
            "speedup": shared["images_per_s"] / alone["images_per_s"],
            "per_trial_images_per_s": shared["per_trial"], "timed_steps": timed,
            "peak_tflops": peak / 1e12, "peak_source": peak_source}


def trial_processes(run: Run, row: Row, n: int, steps: int, folder: Path) -> tuple[dict, dict]:
    """Start n trial workers; once all are ready, let worker 0 train alone ("alone"), then all
    n at once ("go"); return the timings of both phases."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trial-worker", str(folder),
           "--device", str(run.device), "--batch", str(row.batch), "--steps", str(steps)]
    cmd += ["--smoke"] if run.args.smoke else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([*cmd, "--trial-index", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n)]
    try:
        wait_for(lambda: all((folder / f"ready{i}").exists() for i in range(n)), procs)
        (folder / "alone").touch()
        wait_for(lambda: (folder / "alone.json").exists(), procs)
        (folder / "go").touch()
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode:
                raise RuntimeError(f"a trial worker failed ({proc.returncode}): {out[-800:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    alone = phase_rate([json.loads((folder / "alone.json").read_text())], steps)
    shared = phase_rate([json.loads((folder / f"trial{i}.json").read_text())
                         for i in range(n)], steps)
    return alone, shared


def phase_rate(results: list[dict], steps: int) -> dict:
    """Images/s of trials timed together: all their images over first start to last end."""
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"images_per_s": sum(r["images"] for r in results) / wall,
            "ms_per_step": 1e3 * wall / steps,
            "per_trial": [r["images"] / (r["end"] - r["start"]) for r in results]}


def wait_for(ready, procs: list[subprocess.Popen], timeout: float = 600.0) -> None:
    """Poll until ready(); raise when a process died first or the timeout passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a trial worker exited early: {dead[0].stdout.read()[-800:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"trial workers not ready after {timeout:.0f}s")
        time.sleep(0.02)


def trial_worker(args: argparse.Namespace) -> int:
    """One trial (in its own process): build and warm up, say so, then train `args.steps`
    steps at each signal it waits for (worker 0: alone first), timing each phase."""
    folder, device, index = Path(args.trial_worker), torch.device(args.device), args.trial_index
    torch.set_num_threads(1 if device.type == "cpu" else 4)
    model, shape = (SMOKE_RECIPE, (3, 16, 16)) if args.smoke else (RECIPE, CIFAR)
    row = Row("share", args.batch, amp=True, channels_last=True)
    data = batches(2, args.batch, shape, device)
    cfg = train_config(model, row, device)
    state = new_state(cfg, data[0], device)
    for i in range(2):
        train_step(state, data[i % 2], cfg)
    synchronize(device)
    (folder / f"ready{index}").touch()
    phases = (["alone"] if index == 0 else []) + ["go"]
    for phase in phases:
        while not (folder / phase).exists():
            time.sleep(0.005)
        start = time.time()
        for i in range(args.steps):
            train_step(state, data[i % 2], cfg)
        synchronize(device)
        end = time.time()
        name = "alone.json" if phase == "alone" else f"trial{index}.json"
        write_json_atomic(folder / name, {"start": start, "end": end,
                                   "images": args.steps * args.batch})
    return 0


# ------------------------------------------------------------------------------ the rows

def estimate_s(run: Run, row: Row) -> float:
    """Seconds a row will take: its steps at the per-image time measured so far (none yet:
    0, the first row always runs), plus a cold compile, plus trial start-ups."""
    warmup, timed, profiled = run.steps(row)
    per_image = run.s_per_image or 0.0
    seconds = (warmup + timed + 3 * profiled) * row.batch * per_image
    recompiles = row.kind != "compile+graph" or run.compiled is None
    if row.compile and recompiles and run.device.type == "cuda":
        seconds += COMPILE_S
    if row.kind == "share":
        start = TRIAL_START_S[run.device.type]
        seconds = start + (1 + run.shared_trials) * (timed + 2) * row.batch * per_image
    return seconds


def run_row(run: Run, row: Row, workdir: Path) -> dict:
    """One row's entry: measured, or why not ("skipped (time limit)", "not run on cpu",
    "failed: ..."); a failure is reported and the other rows still run."""
    entry = {"row": row.name, "kind": row.kind, "batch": row.batch}
    if run.device.type != "cuda" and row.cpu_skip():
        return entry | {"status": row.cpu_skip()}
    if row.kind not in run.args.rows:
        return entry | {"status": "skipped (--rows)"}
    need, left = estimate_s(run, row), run.deadline - time.perf_counter()
    if need > left:
        return entry | {"status": f"skipped (time limit): needs ~{need:.0f}s, "
                                  f"{max(left, 0):.0f}s of --time-limit "
                                  f"{run.args.time_limit:.0f}s left"}
    started = time.perf_counter()
    try:
        figures = shared_trials(run, row, workdir) if row.kind == "share" else measure(run, row)
    except Exception as err:  # noqa: BLE001 - reported in the table, never swallowed silently
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        return entry | {"status": f"failed: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]}",
                        "row_s": time.perf_counter() - started}
    if run.s_per_image is None and not row.compile and row.kind != "share":
        run.s_per_image = figures["ms_per_step"] / 1e3 / row.batch
    return entry | {"status": "measured", **figures, "row_s": time.perf_counter() - started}


# ----------------------------------------------------------------------------- pipeline

def nfpipe(*argv: str, env: dict | None = None, cwd: Path) -> str:
    """Run the CLI in a fresh process; raise with its output when it fails."""
    exe = Path(sys.executable).parent / "nfpipe"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    proc = subprocess.run([*cmd, *argv], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"nfpipe {' '.join(argv[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def pipeline_check(args, device: torch.device, workdir: Path) -> dict:
    """One epoch of the cifar10 profile on a synthetic archive, then CPU sampling/scoring."""
    n_train, n_test = (320, 128) if args.smoke else (5000, 1000)
    archive = write_archive(workdir / "cifar-10-python.tar.gz", n_train, n_test)
    gpu = device.type == "cuda"
    sets = {"name": "gpucheck", "data_prep.source": archive,
            "data_prep.output_root": workdir / "shards", "workdir": workdir / "work",
            "mlflow.tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "mlflow.artifact_root": workdir / "mlartifacts", "train.epochs": 1,
            "train.eval_at_start": "false", "train.sample_n": 16,
            "train.scaling.num_workers": 1, "train.scaling.use_gpu": str(gpu).lower(),
            "train.scaling.cpus_per_worker": max(1, min(8, (os.cpu_count() or 2) - 1)),
            "train.loader_workers": 0 if args.smoke else 4,
            "evaluate.device": "cuda" if gpu else "cpu", "evaluate.grid_samples": 16,
            "ray.dashboard": "false"}  # start-up time (and packages) the check does not need
    if args.smoke:
        sets["train.model"] = json.dumps(SMOKE_RECIPE | {"levels": 1})
        sets["train.optim.warmup_steps"] = 5
        sets["train.batch_size"] = 64  # the profile's global 512 exceeds the 288 train images
        sets["evaluate.k"] = 2  # the default 64 draws per image cost a minute on a CPU
    start = time.perf_counter()
    argv = ["run", str(REPO / "pipeline.yaml"), "--profile", "cifar10",
            "--stages", "data_prep,train,evaluate,promote"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    nfpipe(*argv, cwd=workdir)
    records = workdir / "work" / "records"
    train_out = json.loads((records / "train.json").read_text())["outputs"]
    evaluate_out = json.loads((records / "evaluate.json").read_text())["outputs"]
    promote_out = json.loads((records / "promote.json").read_text())["outputs"]
    stage_s = {stage: json.loads((records / f"{stage}.json").read_text())["seconds"]
               for stage in ("data_prep", "train", "evaluate", "promote")}
    result = {"backend": "nccl" if gpu else "gloo", "use_gpu": gpu, "train_images": n_train,
              "test_images": n_test, "run_s": time.perf_counter() - start, "stage_s": stage_s,
              "train_val_bpd": train_out["val_bpd"], "evaluate_device":
              sets["evaluate.device"], "evaluate_test_bpd": evaluate_out["test_bpd"],
              "promoted": promote_out["promoted"], "model_uri": promote_out["model_uri"],
              "manifest": promote_out["manifest"],
              **score_on_cpu(workdir, promote_out, sets["mlflow.tracking_uri"])}
    # the test split fits one shard: the CPU scores cover it all, under other noise draws
    result["cpu_minus_evaluate_bpd"] = result["cpu_mean_bpd"] - result["evaluate_test_bpd"]
    result["cpu_agrees_with_evaluate"] = abs(result["cpu_minus_evaluate_bpd"]) <= 0.02
    return result


def score_on_cpu(workdir: Path, promote_out: dict, uri: str) -> dict:
    """Sample and score the champion in processes that see no GPU."""
    model = f"{promote_out['model_name']}@champion"
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    out = workdir / "champion_samples.png"
    nfpipe("deploy", "sample", "--tracking-uri", uri, "--model", model, "--n", "16",
           "--out", str(out), env=no_gpu, cwd=workdir)
    shards = sorted(Path(promote_out["manifest"]).parent.glob("test-*.tar"))
    scored = json.loads(nfpipe("deploy", "score", "--tracking-uri", uri, "--model", model,
                               "--json", str(shards[0]), env=no_gpu, cwd=workdir))
    bpd = [row["bpd"] for row in scored["scores"]]
    return {"cpu_sample_png": str(out), "cpu_sampled": out.exists(),
            "cpu_scored_images": len(bpd), "cpu_mean_bpd": scored["mean_bpd"],
            "cpu_scores_finite": all(math.isfinite(b) for b in bpd)}


def loader_rate(manifest_path: str, batch: int) -> dict:
    """Decoded train images per second of process CPU time (one core), num_workers=0."""
    manifest = Manifest.load(manifest_path)
    loader = make_loader(manifest, "train", batch, mode="train")
    cpu, wall, n = time.process_time(), time.perf_counter(), 0
    for x, _ in loader:
        n += x.shape[0]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": n, "images_per_cpu_s": n / cpu, "images_per_s": n / wall}


# -------------------------------------------------------------------------------- report

def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_row(r: dict) -> str:
    if r["status"] != "measured":
        return f"  {r['row']:20s} {r['status']}"
    extra = (f"  {r['trials']} trials vs 1: {r['speedup']:.2f}x "
             f"(alone {r['single_images_per_s']:.1f} img/s)" if r["kind"] == "share" else "")
    return (f"  {r['row']:20s} {r['images_per_s']:9.1f} img/s {r['ms_per_step']:8.1f} ms  "
            f"MFU {100 * r['mfu']:5.2f}%  mem {fmt(r['peak_mem_gib'], '6.2f', '   n/a')} GiB  "
            f"kernels {fmt(r['kernels_per_step'], '7.0f', '    n/a')}  "
            f"busy {fmt(r['device_busy'] and 100 * r['device_busy'], '5.1f', '  n/a')}%"
            f"{extra}")


def summary(report: dict) -> str:
    info, peaks = report["environment"], report["measured_peaks"]
    lines = [f"gpu-check {info['date']}  mode={report['mode']}  device={info['device']}",
             f"  GPU {info['gpu']}  memory {info.get('gpu_memory_gib', 'n/a')} GiB  "
             f"CUDA {info['cuda']}  cuDNN {info['cudnn']}  NCCL {info['nccl']}  "
             f"torch {info['torch']}",
             f"  CPU {info['cpu']} x{info['nproc']}  load {info['load']}",
             f"  matmul peak (measured): {peaks['fp32_label']} {peaks['fp32'] / 1e12:.2f} "
             f"TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s; MFU is over "
             f"{report['mfu_peak']}"]
    check = report.get("bf16_vs_fp32")
    if check and "agrees" in check:
        lines.append(f"  same weights, bf16 vs fp32: loss {check['loss_bf16']:.5f} vs "
                     f"{check['loss_fp32']:.5f} ({100 * check['loss_rel']:.3f}%, tol "
                     f"{100 * LOSS_TOL:.1f}%), gradients {100 * check['grad_rel_l2']:.2f}% "
                     f"(tol {100 * GRAD_TOL:.0f}%): {'agree' if check['agrees'] else 'DIFFER'}")
    elif check:
        lines.append(f"  same weights, bf16 vs fp32: {check.get('status')}")
    lines.append("  row                      img/s  ms/step  MFU       peak mem    kernels/step "
                 "device busy")
    lines += [format_row(r) for r in report["rows"]]
    p = report.get("pipeline")
    if p and "error" not in p:
        lines.append(f"  pipeline: cifar10 profile, 1 epoch on {p['train_images']} synthetic "
                     f"images, use_gpu={p['use_gpu']} ({p['backend']}), {p['run_s']:.0f}s; "
                     f"test bpd {p['evaluate_test_bpd']:.4f}; champion on CPU "
                     f"{p['cpu_mean_bpd']:.4f} bpd, agrees: {p['cpu_agrees_with_evaluate']}")
    elif p:
        lines.append(f"  pipeline: {p['error'].splitlines()[0]}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model and steps (CI)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per row (default: 1024 images, at least 6 steps)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds from the start; rows that would not fit are skipped "
                             "(default 450, smoke 120)")
    parser.add_argument("--rows", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--pipeline", action="store_true",
                        help="also the one-epoch cifar10 pipeline and CPU scoring (~2 min)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default: WORKDIR/gpu_check.json)")
    parser.add_argument("--trial-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trial-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = args.rows.split(",")
    unknown = sorted(set(args.rows) - set(KINDS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    if args.time_limit is None:
        args.time_limit = 120.0 if args.smoke else 450.0
    return args


def measured_peaks(device: torch.device) -> dict:
    """The best of a few n^3 matmuls in fp32 (TF32 allowed on a GPU) and bf16."""
    gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    n, reps = (8192, 10) if gpu else (512, 3)
    return {"fp32": mm_peak(torch.float32, n, reps, device, calls=4, warmup=3)["best"],
            "bf16": mm_peak(torch.bfloat16, n, reps, device, calls=4, warmup=3)["best"],
            "fp32_label": "TF32" if gpu else "fp32 (CPU)", "n": n}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trial_worker:
        return trial_worker(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run with --device cpu --smoke", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nfpipe-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.json or workdir / "gpu_check.json"
    # one thread in smoke mode: on a shared CPU, two OpenMP threads that wait for each other
    # made tiny steps 20x slower
    torch.set_num_threads(1 if args.smoke else max(1, min(os.cpu_count() or 1, 8)))
    gpu = device.type == "cuda"
    small, large = (16, 64) if args.smoke else (64, 512)
    run = Run(args, device, SMOKE_RECIPE if args.smoke else RECIPE,
              (3, 16, 16) if args.smoke else CIFAR, measured_peaks(device),
              started + args.time_limit)
    name = run.gpu_name
    known = next((k for k in PEAK_TFLOPS if k in name), None)
    report = {"mode": "gpu" if gpu else ("cpu-smoke" if args.smoke else "cpu"),
              "status": "running", "environment": environment(device),
              "measured_peaks": run.measured_peaks,
              "mfu_peak": (f"the {known} data sheet's dense peaks (TFLOP/s): "
                           f"{PEAK_TFLOPS[known]}" if known else
                           "the matmul peaks measured here (no data-sheet figure)"),
              "recipe": run.model, "shape": run.shape, "optim": OPTIM,
              "notes": [] if gpu else ["CPU run: no CUDA, cuDNN, NCCL, TF32, kernels or GPU "
                                       "memory; GPU figures not measured"],
              "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    print(f"gpu-check: {report['environment']}", flush=True)

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        write_json_atomic(out, report)

    try:
        report["bf16_vs_fp32"] = bf16_vs_fp32(run, small)
    except Exception as err:  # noqa: BLE001 - reported, the rows still run
        report["bf16_vs_fp32"] = {"status": f"failed: {type(err).__name__}: {err}"}
    save()
    for row in plan(small, large):
        report["rows"].append(run_row(run, row, workdir))
        print(format_row(report["rows"][-1]), flush=True)
        save()
    if args.pipeline:
        report["pipeline"] = guarded_pipeline(args, run, workdir, small)
    report["status"] = "complete"
    save()
    print(summary(report) + f"\n  done in {report['wall_s']:.0f}s", flush=True)
    print(f"gpu-check: JSON in {out}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir / "work" / "ray_results", ignore_errors=True)
    return 0


def guarded_pipeline(args, run: Run, workdir: Path, batch: int) -> dict:
    """The pipeline part when it fits the time limit; its error as its result otherwise."""
    need, left = (120.0 if run.device.type == "cuda" else 60.0), run.deadline - time.perf_counter()
    if need > left:
        return {"error": f"skipped (time limit): needs ~{need:.0f}s, {max(left, 0):.0f}s left"}
    args.batch = batch
    try:
        result = pipeline_check(args, run.device, workdir)
        result["loader"] = loader_rate(result["manifest"], batch)
        return result
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as err:
        return {"error": str(err)}


if __name__ == "__main__":
    sys.exit(main())
