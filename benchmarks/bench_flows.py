"""CPU throughput, FLOP efficiency, sampling rate and training memory of the flow models.

At CIFAR shape (3x32x32, 256 levels), batch 16, Adam:

1. training throughput (images/s of forward + backward + Adam step) at 2 and 1 torch threads
   for Glow (L=3, K=8, hidden 512), the full Glow CIFAR recipe (L=3, K=32, hidden 512),
   RealNVP and f-VAE (settings in `MODELS`);
2. model FLOPs per image (`torch.utils.flop_counter.FlopCounterMode` around one forward +
   backward: it counts convolutions and matmuls of both passes -- `convolution_backward` is
   ~2x the forward -- and nothing elementwise, no Adam, no LU/slogdet) and the fraction of the
   machine's matmul peak reached: a 2048x2048 float32 `torch.mm`, timed right before each
   training row at the same thread count; plus two harness-only variants (channels_last
   weights, and the `net_dtype: bfloat16` config, which runs the coupling nets under CPU bf16
   autocast) and a per-shape breakdown of Glow's convolutions (what bounds the fraction);
3. sampling throughput at temperature 0.7 (images/s, batches of 16);
4. peak training memory per image, with and without `checkpoint_nets=True`: one fresh
   subprocess per (model, checkpointing, batch) that builds the model, initialises ActNorm,
   runs one training step (so Adam's state exists), frees and `malloc_trim`s, reads VmRSS,
   resets the kernel's peak-RSS counter (`/proc/self/clear_refs` = 5), runs a second step
   and reads VmHWM. peak - base = everything the step adds (activations, gradients, Adam
   update temporaries, oneDNN scratch); the per-image figure is that over the batch, and the
   marginal one the slope between batch 8 and 16 (constant parts cancel).

Timings are wall-clock medians after a warm-up (min in brackets); the machine may be shared,
so compare only ratios within one run, and read the load averages it prints.

    .venv/bin/python benchmarks/bench_flows.py [--json out.json] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flows  # noqa: E402

T = TypeVar("T")
CPU = torch.device("cpu")
SHAPE = (3, 32, 32)
BATCH = 16
TEMPERATURE = 0.7
MODELS = {
    # the Glow: L=3, K=8, hidden 512
    "glow-K8": dict(name="glow", levels=3, steps=8, hidden=512),
    # the full CIFAR recipe (pipeline.yaml profile): L=3, K=32, hidden 512
    "glow-K32": dict(name="glow", levels=3, steps=32, hidden=512),
    # Real NVP paper's CIFAR-10 net: 8 residual blocks of 64 maps, one down-scaling (2 scales:
    # 3 checkerboard, squeeze, 3 channel-wise, split; 4 checkerboard); defaults are 2/3/64/2
    "realnvp": dict(name="realnvp", levels=2, steps=3, hidden=64, res_blocks=8),
    # defaults (2 levels, 3 steps, 64 wide) scaled to Glow's 3 levels at K=8, 128 wide (the
    # E/G residual nets run at 32x32, so 512 would put ~20 GFLOP/img there alone)
    "fvae": dict(name="fvae", levels=3, steps=8, hidden=128, res_blocks=2),
}
# (model, threads, warm-up steps, timed steps, variant)
TRAIN_ROWS = [
    ("glow-K8", 2, 2, 6, "fp32"),
    ("glow-K8", 2, 1, 6, "channels_last"),
    ("glow-K8", 2, 1, 6, "bf16-nets"),
    ("glow-K8", 1, 1, 3, "fp32"),
    ("glow-K32", 2, 1, 2, "fp32"),
    ("glow-K32", 2, 1, 2, "channels_last"),
    ("glow-K32", 1, 1, 2, "fp32"),
    ("realnvp", 2, 1, 4, "fp32"),
    ("realnvp", 2, 1, 4, "channels_last"),
    ("realnvp", 1, 1, 2, "fp32"),
    ("fvae", 2, 1, 4, "fp32"),
    ("fvae", 2, 1, 4, "channels_last"),
    ("fvae", 1, 1, 2, "fp32"),
]
SAMPLE_ROWS = [("glow-K8", 2), ("glow-K8", 1), ("glow-K32", 2), ("realnvp", 2), ("fvae", 2)]


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def host_info() -> dict:
    """The machine a benchmark ran on: date, torch and Python versions, CPU and core count."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "nproc": os.cpu_count(), "cpu": cpu_model()}


def config(key: str, **extra) -> flows.ModelConfig:
    return flows.ModelConfig(image_shape=SHAPE, n_bins=256, **MODELS[key], **extra)


def batch(n: int = BATCH, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)


def make(key: str, variant: str = "fp32", n: int = BATCH, **extra):
    torch.manual_seed(0)
    if variant == "bf16-nets":
        extra["net_dtype"] = "bfloat16"
    model = flows.build_model(config(key, **extra))
    x = batch(n)
    flows.initialize_from_batch(model, x)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(x).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return model, x, step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queue (CUDA runs asynchronously; a CPU has none)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(step: Callable[[int], T], n: int, start: int = 0,
              sync: Callable[[], None] = lambda: None) -> tuple[float, list[T]]:
    """Wall seconds of step(start), ..., step(start + n - 1) run back to back, the clock read
    after sync() (so a device's queued work counts), and their outputs."""
    begin = time.perf_counter()
    outputs = [step(i) for i in range(start, start + n)]
    sync()
    return time.perf_counter() - begin, outputs


def timed(fn: Callable[[], T], warmup: int, reps: int, sync: Callable[[], None] = lambda: None,
          calls: int = 1) -> tuple[list[float], T | None]:
    """Seconds per call of fn(): `reps` timings of `calls` back-to-back calls each, after
    `warmup` untimed calls; and the last output."""
    _, outputs = run_steps(lambda _: fn(), warmup, sync=sync)
    times = []
    for _ in range(reps):
        seconds, outputs = run_steps(lambda _: fn(), calls, sync=sync)
        times.append(seconds / calls)
    return times, outputs[-1] if outputs else None


def mm_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 8,
            device: torch.device = CPU, calls: int = 1, warmup: int = 2) -> dict:
    """FLOP/s of an n x n x n `torch.mm` on `device` (at the current thread count on a CPU):
    median and best of `reps` timings of `calls` products each."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times, _ = timed(lambda: torch.mm(a, b), warmup, reps, lambda: synchronize(device), calls)
    flop = 2 * n**3
    return {"median": flop / statistics.median(times), "best": flop / min(times)}


def count_flops(model, x) -> dict:
    """Convolution / matmul FLOPs of one forward and one backward, per image."""
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fwd:
        loss = model(x).mean()
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    n = x.shape[0]
    return {"fwd": fwd.get_total_flops() / n, "bwd": bwd.get_total_flops() / n,
            "total": (fwd.get_total_flops() + bwd.get_total_flops()) / n}


def train_rows(flop_cache: dict) -> list[dict]:
    rows = []
    for key, threads, warmup, reps, variant in TRAIN_ROWS:
        torch.set_num_threads(threads)
        model, x, step = make(key, variant)
        if key not in flop_cache:
            flop_cache[key] = count_flops(model, x)
        flop = flop_cache[key]["total"]
        peak = mm_peak()
        times, loss = timed(step, warmup, reps)
        med, best = statistics.median(times), min(times)
        row = {
            "model": key, "variant": variant, "threads": threads, "batch": BATCH,
            "step_s": med, "step_s_min": best, "images_per_s": BATCH / med,
            "gflop_per_image": flop / 1e9, "gflops": flop * BATCH / med / 1e9,
            "mm_peak_gflops": peak["median"] / 1e9,
            "peak_fraction": flop * BATCH / med / peak["median"],
            "peak_fraction_best": flop * BATCH / best / peak["best"],
            "loss_finite": bool(torch.isfinite(torch.tensor(loss))), "load": loadavg(),
        }
        if variant == "bf16-nets":
            bf = mm_peak(torch.bfloat16)
            row["mm_peak_bf16_gflops"] = bf["median"] / 1e9
            row["peak_fraction_bf16"] = flop * BATCH / med / bf["median"]
        rows.append(row)
        print(f"  train {key:9s} {variant:13s} t={threads} step {med:6.3f}s [{best:.3f}] "
              f"{row['images_per_s']:6.1f} img/s  {row['gflops']:6.1f} GFLOP/s = "
              f"{100 * row['peak_fraction']:4.1f}% of mm {row['mm_peak_gflops']:.0f} "
              f"(best/best {100 * row['peak_fraction_best']:4.1f}%)  loss {loss:.3f}  "
              f"load {row['load']}", flush=True)
        del model, step
        gc.collect()
    return rows


def conv_breakdown(threads: int = 2, hidden: int = 512, reps: int = 6) -> list[dict]:
    """Forward + backward (input and weight grads) of each conv shape in a Glow K=8 step."""
    torch.set_num_threads(threads)
    rows = []
    peak = mm_peak()["median"]
    for level, (c, hw) in enumerate([(12, 16), (24, 8), (48, 4)], 1):
        for name, cin, cout, k in [("3x3 in", c // 2, hidden, 3), ("1x1 mid", hidden, hidden, 1),
                                   ("3x3 out (zero)", hidden, c, 3)]:
            conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
            x = torch.randn(BATCH, cin, hw, hw, requires_grad=True)  # inner layer: dX too

            def fb(conv=conv, x=x):
                conv.zero_grad(set_to_none=True)
                conv(x).sum().backward()

            flop = 3 * 2 * BATCH * hw * hw * cin * cout * k * k  # fwd + dX + dW
            times, _ = timed(fb, 2, reps)
            med = statistics.median(times)
            rows.append({"level": level, "map": f"{hw}x{hw}", "conv": name, "cin": cin,
                         "cout": cout, "gflop_per_step": flop / 1e9, "ms": med * 1e3,
                         "gflops": flop / med / 1e9, "peak_fraction": flop / med / peak})
            print(f"  conv L{level} {hw:2d}x{hw:<2d} {name:15s} {cin:3d}->{cout:3d}: "
                  f"{flop / 1e9:5.2f} GFLOP {med * 1e3:7.1f} ms {flop / med / 1e9:6.1f} GFLOP/s "
                  f"= {100 * flop / med / peak:4.1f}% of mm", flush=True)
    flop = sum(r["gflop_per_step"] for r in rows) / sum(r["ms"] for r in rows) * 1e3
    print(f"  all of them (each x K): {flop:.1f} GFLOP/s = {100 * flop * 1e9 / peak:.1f}% of mm "
          f"{peak / 1e9:.0f} -- the ceiling for a step made only of these kernels", flush=True)
    return rows


def profile_shares(key: str = "glow-K8", threads: int = 2) -> dict:
    """Share of one training step's CPU time in conv forward, conv backward and the rest."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    _, _, step = make(key)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"conv fwd": ("aten::mkldnn_convolution", "aten::_convolution",
                           "aten::convolution", "aten::conv2d"),
              "conv bwd": ("aten::convolution_backward",),
              "relu fwd+bwd": ("aten::clamp_min", "aten::relu", "aten::threshold_backward",
                               "aten::relu_")}
    shares = {g: sum(e.self_cpu_time_total for e in events if e.key in names) / total
              for g, names in groups.items()}
    shares["optimizer (Adam)"] = sum(
        e.self_cpu_time_total for e in events
        if e.key.startswith(("aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul",
                             "aten::sqrt", "Optimizer"))) / total
    shares["other (elementwise, LU, cat, copies)"] = 1 - sum(shares.values())
    print("  profile " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()), flush=True)
    return shares


def sample_rows() -> list[dict]:
    rows = []
    for key, threads in SAMPLE_ROWS:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = flows.build_model(config(key))
        flows.initialize_from_batch(model, batch())
        model.eval()
        times, y = timed(lambda m=model: m.sample(BATCH, TEMPERATURE), 1, 3)
        med = statistics.median(times)
        rows.append({"model": key, "threads": threads, "n": BATCH, "s": med,
                     "images_per_s": BATCH / med, "finite": bool(torch.isfinite(y).all()),
                     "load": loadavg()})
        print(f"  sample {key:9s} t={threads} T={TEMPERATURE}: {BATCH / med:7.1f} img/s "
              f"({med:.3f}s/16) finite={rows[-1]['finite']}", flush=True)
    return rows


# ---------------------------------------------------------------- memory (subprocesses)

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(spec: str) -> None:
    key, ckpt, n = spec.split(",")
    torch.set_num_threads(2)
    model, _, step = make(key, n=int(n), checkpoint_nets=ckpt == "1")
    numel = sum(p.numel() for p in model.parameters())
    step()  # Adam state, oneDNN primitives
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to VmRSS
    t = time.perf_counter()
    step()
    elapsed = time.perf_counter() - t
    print(json.dumps({"base_kb": base, "peak_kb": _status_kb("VmHWM"), "step_s": elapsed,
                      "params": numel}))


def memory_rows() -> list[dict]:
    rows = []
    for key in MODELS:
        for ckpt in (False, True):
            res = {}
            for n in (8, BATCH):
                out = subprocess.run(
                    [sys.executable, __file__, "--memory-child", f"{key},{int(ckpt)},{n}"],
                    capture_output=True, text=True, check=True)
                res[n] = json.loads(out.stdout.strip().splitlines()[-1])
            delta = {n: (r["peak_kb"] - r["base_kb"]) / 1024 for n, r in res.items()}
            row = {"model": key, "checkpoint_nets": ckpt, "batch": BATCH,
                   "step_peak_mib": delta[BATCH], "mib_per_image": delta[BATCH] / BATCH,
                   "marginal_mib_per_image": (delta[BATCH] - delta[8]) / (BATCH - 8),
                   "step_s_single": res[BATCH]["step_s"], "params_m": res[BATCH]["params"] / 1e6,
                   # param + grad + Adam's two moments, float32: held between steps, not in
                   # the step's figure
                   "state_mib": 4 * 4 * res[BATCH]["params"] / 2**20}
            rows.append(row)
            print(f"  memory {key:9s} ckpt={int(ckpt)}: step adds {delta[BATCH]:7.1f} MiB at "
                  f"B={BATCH} = {row['mib_per_image']:6.1f} MiB/img, marginal "
                  f"{row['marginal_mib_per_image']:6.1f} MiB/img "
                  f"(step {row['step_s_single']:.2f}s; "
                  f"{row['params_m']:.1f}M params, state {row['state_mib']:.0f} MiB)",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    start = time.perf_counter()
    info = {**host_info(),
            "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
            "load_start": loadavg()}
    print(json.dumps(info), flush=True)
    results: dict = {"info": info}
    flop_cache: dict = {}
    print("training (batch 16, Adam):", flush=True)
    results["train"] = train_rows(flop_cache)
    results["flops"] = flop_cache
    for key, f in flop_cache.items():
        print(f"  flops {key:9s} {f['total'] / 1e9:6.2f} GFLOP/img (fwd {f['fwd'] / 1e9:.2f}, "
              f"bwd {f['bwd'] / 1e9:.2f})", flush=True)
    print("glow-K8 step, where the time goes (2 threads):", flush=True)
    results["profile"] = profile_shares()
    results["convs"] = conv_breakdown()
    print("sampling:", flush=True)
    results["sample"] = sample_rows()
    if not args.no_memory:
        print("peak training memory (fresh subprocess each):", flush=True)
        results["memory"] = memory_rows()
    info["load_end"] = loadavg()
    info["wall_s"] = time.perf_counter() - start
    print(f"done in {info['wall_s']:.0f}s, load {info['load_start']} -> {info['load_end']}",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
