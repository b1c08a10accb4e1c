"""The GPU path, end to end, in one command (`make gpu-check`).

1. The environment: GPU name and memory, CUDA, cuDNN, NCCL and torch versions.
2. The measured matmul peak: an n x n x n `torch.mm` in TF32 (float32 with TF32 allowed) and
   in bf16, timed with CUDA events.
3. The CIFAR-10 Glow recipe (L=3, K=32, hidden 512, affine, Adamax, batch 64), RealNVP and
   f-VAE at their CIFAR settings (as in bench_flows.py), each trained for `--steps` steps of
   the real training step (`train.state.build_state` + `train.loop.train_step`: the fused
   optimiser, the device-side non-finite guard, DDP-free) on smooth synthetic CIFAR-like
   images, in variants: fp32 (TF32) eager; bf16 autocast of the coupling nets (`train.amp`);
   bf16 + channels_last; bf16 + torch.compile. Per variant: images/s, model-FLOP utilisation
   (FLOPs of one forward + backward counted by `torch.utils.flop_counter`, over the measured
   peak of the variant's precision), peak memory, whether the loss is finite, and whether the
   bf16 loss agrees with the fp32 loss after the same steps (mean of the last 10 steps within
   2%). Where the time goes: the profiler's top ops of the fastest Glow variant.
4. A one-epoch `nfpipe run --profile cifar10` on a synthetic archive in the official CIFAR-10
   format with `train.scaling.use_gpu=true`, 1 worker (NCCL), evaluating on the GPU,
   promoting; then `nfpipe deploy sample` and `deploy score` of the champion from the
   registry in a process that sees no GPU (CUDA_VISIBLE_DEVICES=""): a GPU-trained model
   loads and scores on a CPU-only machine.
5. The loader: decoded images per CPU-second (one core) from those shards, against the
   images/s one GPU consumes, i.e. how many CPU cores each GPU needs.

One summary table, also written as JSON. The model variants run most wanted first
(PRIORITY), each only when its estimated time fits the rest of `--budget-s` (330 s); those
that would not fit are skipped and say so. With the pipeline, about 8 minutes on one H200.
`--device cpu --smoke` runs the same code on tiny shapes and steps in about a minute,
skipping what needs CUDA (and torch.compile, minutes of C++ compiling on a CPU;
tests/train/test_compile.py covers it).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--json PATH] [--workdir DIR]
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
from bench_flows import MODELS as BENCH_MODELS  # noqa: E402
from bench_flows import (  # noqa: E402
    count_flops,
    host_info,
    loadavg,
    mm_peak,
    run_steps,
    synchronize,
)
from bench_shards import synthetic_images, write_archive  # noqa: E402

from data_prep import Manifest, make_loader  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.ddp import WorkerInfo  # noqa: E402
from train.loop import configure_torch, train_step  # noqa: E402
from train.state import build_state  # noqa: E402

CIFAR = (3, 32, 32)
MODELS = {  # the CIFAR settings of bench_flows.py (Glow: the cifar10 profile's recipe)
    "glow": BENCH_MODELS["glow-K32"] | {"coupling": "affine"},
    "realnvp": BENCH_MODELS["realnvp"],
    "fvae": BENCH_MODELS["fvae"],
}
SMOKE_MODELS = {
    "glow": {"name": "glow", "levels": 2, "steps": 2, "hidden": 16, "coupling": "affine"},
    "realnvp": {"name": "realnvp", "levels": 2, "steps": 1, "hidden": 16, "res_blocks": 1},
    "fvae": {"name": "fvae", "levels": 2, "steps": 2, "hidden": 16, "res_blocks": 1},
}
OPTIM = {"name": "adamax", "lr": 1e-3, "warmup_steps": 50}  # Glow's; the same for all rows
AGREE_REL = 0.02  # bf16 and fp32 losses after the same steps: within 2%
# Seconds torch.compile (inductor, cold cache) takes before the first step: Glow's CIFAR recipe
# took 193 s on an H200 with 16 cores (RESULTS.md); the smaller models' figure is a guess.
COMPILE_S = {"glow": 200.0, "other": 60.0}
# The order the variants run in, most wanted first: the budget cuts the tail. The headline row
# (Glow bf16 + compile) comes right after its fp32 reference.
PRIORITY = [("glow", "fp32"), ("glow", "bf16+compile"), ("glow", "bf16"),
            ("realnvp", "fp32"), ("fvae", "fp32"), ("realnvp", "bf16"), ("fvae", "bf16"),
            ("glow", "bf16+channels_last"), ("realnvp", "bf16+channels_last"),
            ("fvae", "bf16+channels_last"), ("realnvp", "bf16+compile"),
            ("fvae", "bf16+compile")]


@dataclass(frozen=True)
class Variant:
    name: str
    amp: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = [Variant("fp32"), Variant("bf16", amp=True),
            Variant("bf16+channels_last", amp=True, channels_last=True),
            Variant("bf16+compile", amp=True, compile=True)]


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
    """Smooth synthetic CIFAR-like uint8 images (bench_shards), resized to `shape`."""
    images = torch.from_numpy(synthetic_images(n_batches * batch, seed=0))
    images = images.reshape(-1, *CIFAR)[:, :, : shape[1], : shape[2]].contiguous()
    return [x.to(device) for x in images.split(batch)]


def train_config(model: dict, variant: Variant, batch: int, device: torch.device) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": model, "batch_size": batch, "optim": OPTIM, "amp": variant.amp,
        "compile": variant.compile, "channels_last": variant.channels_last, "tf32": True,
        "max_nonfinite_steps": 10**6, "scaling": {"num_workers": 1,
                                                  "use_gpu": device.type == "cuda"}})


def time_variant(key: str, model: dict, variant: Variant, data: list, steps: int,
                 warmup: int, device: torch.device, peaks: dict, flops: dict) -> dict:
    """Train one variant from the same initial weights on the same batches; time `steps`."""
    batch, shape = data[0].shape[0], tuple(data[0].shape[1:])
    cfg = train_config(model, variant, batch, device)
    world = WorkerInfo(device=str(device))
    configure_torch(cfg, world)
    update = {"image_shape": shape, "n_bins": 256}
    if variant.amp:
        update["net_dtype"] = "bfloat16"
    state = build_state(cfg, cfg.model.model_copy(update=update), world, init_x=data[0])
    if key not in flops:
        flops[key] = count_flops(state.model, data[0])["total"]
    torch.manual_seed(1)  # the same dequantisation noise in every variant

    def step(i: int) -> torch.Tensor:
        return train_step(state, data[i % len(data)], cfg)[0]

    def sync() -> None:
        synchronize(device)

    warm_s, _ = run_steps(step, warmup, sync=sync)  # torch.compile compiles here
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed, losses = run_steps(step, steps, start=warmup, sync=sync)
    last = torch.stack(losses[-10:]).float()
    peak = peaks["bf16"] if variant.amp else peaks["fp32"]
    images_per_s = steps * batch / elapsed
    return {"model": key, "variant": variant.name, "batch": batch, "steps": steps,
            "images_per_s": images_per_s, "step_ms": 1e3 * elapsed / steps,
            "warmup_s": warm_s, "gflop_per_image": flops[key] / 1e9,
            "mfu": flops[key] * images_per_s / peak,
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else None),
            "loss_finite": bool(torch.isfinite(last).all()), "loss": float(last.mean()),
            "skipped_steps": state.guard.check()[0]}


def agreement(rows: list[dict]) -> None:
    """Mark each bf16 row with whether its loss agrees with the fp32 row's (same steps)."""
    fp32 = {r["model"]: r["loss"] for r in rows if r["variant"] == "fp32" and "loss" in r}
    for row in rows:
        ref = fp32.get(row["model"])
        if row["variant"] != "fp32" and ref is not None and row.get("loss") is not None:
            row["loss_vs_fp32"] = row["loss"] - ref
            row["agrees_with_fp32"] = abs(row["loss"] - ref) <= AGREE_REL * abs(ref)


def model_rows(args, device, peaks, deadline: float) -> list[dict]:
    """Time the (model, variant) pairs in PRIORITY order until the budget says stop."""
    models = SMOKE_MODELS if args.smoke else MODELS
    shape = (3, 16, 16) if args.smoke else CIFAR
    data = batches(4, args.batch, shape, device)
    variants = {v.name: v for v in VARIANTS}
    rows, flops, step_s = [], {}, {}
    for key, name in PRIORITY:
        if key not in args.models or name not in args.variants:
            continue
        variant = variants[name]
        need = estimate_s(key, variant, args.steps + args.warmup, step_s, device)
        skip = skip_reason(args, device, variant, deadline, need, first=not rows)
        if skip:
            rows.append({"model": key, "variant": name, "skipped": skip})
        else:
            rows.append(guarded_variant(key, models[key], variant, data, args, device, peaks,
                                        flops))
            if "step_ms" in rows[-1] and not variant.compile:
                step_s.setdefault(key, rows[-1]["step_ms"] / 1e3)
        print(format_model_row(rows[-1]), flush=True)
    agreement(rows)
    order = {(k, v.name): i for i, (k, v) in enumerate(
        (k, v) for k in MODELS for v in VARIANTS)}
    return sorted(rows, key=lambda r: order[(r["model"], r["variant"])])


def estimate_s(key: str, variant: Variant, steps: int, step_s: dict,
               device: torch.device) -> float:
    """Seconds a variant will take: its steps at the model's first eager step time (when
    known), plus the compile time when it compiles."""
    compile_s = COMPILE_S.get(key, COMPILE_S["other"]) if variant.compile else 0.0
    return steps * step_s.get(key, 0.0) + (compile_s if device.type == "cuda" else 0.0)


def guarded_variant(key: str, model: dict, variant: Variant, data: list, args, device,
                    peaks: dict, flops: dict) -> dict:
    """One variant's row; a variant that breaks (a compiler error, say) becomes a FAILED row
    with its error, so the other rows and the pipeline check still run."""
    try:
        return time_variant(key, model, variant, data, args.steps, args.warmup, device, peaks,
                            flops)
    except Exception as err:  # noqa: BLE001 - reported in the table, never swallowed silently
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"model": key, "variant": variant.name,
                "failed": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}


def skip_reason(args, device, variant: Variant, deadline: float, need_s: float,
                first: bool) -> str | None:
    if variant.compile and device.type != "cuda":
        return ("torch.compile on CPU: minutes of C++ compiling; "
                "tests/train/test_compile.py checks it")
    left = deadline - time.perf_counter()
    if not first and need_s > left:
        return f"needs ~{need_s:.0f}s, {max(left, 0):.0f}s of the {args.budget_s:.0f}s budget left"
    return None


def profile_top_ops(args, device, rows: list[dict], n: int = 8) -> list[dict]:
    """The profiler's top ops (self time) over 3 steps of the fastest eager Glow variant."""
    from torch.profiler import ProfilerActivity, profile

    # eager variants only: profiling a compiled one would pay its compile again
    timed = [r for r in rows if r["model"] == "glow" and "images_per_s" in r
             and "compile" not in r["variant"]]
    if not timed:
        return []
    best = max(timed, key=lambda r: r["images_per_s"])
    variant = next(v for v in VARIANTS if v.name == best["variant"])
    models = SMOKE_MODELS if args.smoke else MODELS
    data = batches(2, args.batch, (3, 16, 16) if args.smoke else CIFAR, device)
    cfg = train_config(models["glow"], variant, args.batch, device)
    update = {"image_shape": tuple(data[0].shape[1:]), "n_bins": 256,
              **({"net_dtype": "bfloat16"} if variant.amp else {})}
    state = build_state(cfg, cfg.model.model_copy(update=update), WorkerInfo(device=str(device)),
                        init_x=data[0])
    for i in range(args.warmup):
        train_step(state, data[i % 2], cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for i in range(3):
            train_step(state, data[i % 2], cfg)
        synchronize(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:n]
    return [{"variant": best["variant"], "op": e.key, "share": getattr(e, attr) / total,
             "ms_per_step": getattr(e, attr) / 3 / 1e3} for e in top]


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
        sets["train.model"] = json.dumps(SMOKE_MODELS["glow"] | {"levels": 1})
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


def format_model_row(r: dict) -> str:
    if "skipped" in r:
        return f"  {r['model']:8s} {r['variant']:19s} skipped: {r['skipped']}"
    if "failed" in r:
        return f"  {r['model']:8s} {r['variant']:19s} FAILED: {r['failed']}"
    agree = {True: "yes", False: "NO", None: "-"}[r.get("agrees_with_fp32")]
    return (f"  {r['model']:8s} {r['variant']:19s} {r['images_per_s']:9.1f} img/s "
            f"MFU {100 * r['mfu']:5.1f}%  mem {fmt(r['peak_mem_gib'], '6.2f', '   n/a')} GiB  "
            f"finite {'yes' if r['loss_finite'] else 'NO':3s}  loss {r['loss']:.5f}  "
            f"bf16~fp32 {agree}  (warm-up {r['warmup_s']:.1f}s)")


def summary(report: dict) -> str:
    info, peaks = report["environment"], report["peak_flops"]
    lines = [f"gpu-check {info['date']}  mode={report['mode']}  device={info['device']}",
             f"  GPU {info['gpu']}  memory {info.get('gpu_memory_gib', 'n/a')} GiB  "
             f"CUDA {info['cuda']}  cuDNN {info['cudnn']}  NCCL {info['nccl']}  "
             f"torch {info['torch']}",
             f"  CPU {info['cpu']} x{info['nproc']}  load {info['load']}",
             f"  matmul peak: {peaks['fp32_label']} {peaks['fp32'] / 1e12:.2f} TFLOP/s, "
             f"bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s",
             "  model     variant                 img/s    MFU    peak mem  finite  "
             "loss     bf16~fp32"]
    for r in report["models"]:
        lines.append(format_model_row(r))
    for op in report["profile"]:
        lines.append(f"  top op ({op['variant']}): {op['op'][:60]:60s} "
                     f"{100 * op['share']:5.1f}%  {op['ms_per_step']:.2f} ms/step")
    p = report["pipeline"]
    if "error" in p:
        lines.append(f"  pipeline: FAILED: {p['error'].splitlines()[0]}")
    else:
        lines.append(f"  pipeline: cifar10 profile, 1 epoch on {p['train_images']} synthetic "
                     f"images, use_gpu={p['use_gpu']} ({p['backend']}), {p['run_s']:.0f}s; "
                     f"val bpd {p['train_val_bpd']:.4f} (train), test bpd "
                     f"{p['evaluate_test_bpd']:.4f} (evaluate on {p['evaluate_device']}); "
                     f"promoted={p['promoted']} {p['model_uri']}")
        lines.append(f"  champion on CPU (no GPU visible): sampled={p['cpu_sampled']}, "
                     f"scored {p['cpu_scored_images']} images, mean {p['cpu_mean_bpd']:.4f} "
                     f"bpd, finite={p['cpu_scores_finite']}, agrees with evaluate: "
                     f"{p['cpu_agrees_with_evaluate']} ({p['cpu_minus_evaluate_bpd']:+.4f})")
        lines.append("  stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                      p["stage_s"].items()))
    loader = report.get("loader")
    if loader:
        lines.append(f"  loader: {loader['images_per_cpu_s']:.0f} images per CPU-second "
                     f"(one core, decode + collate); the fastest Glow variant consumes "
                     f"{fmt(loader.get('gpu_images_per_s'), '.0f')} img/s -> "
                     f"{fmt(loader.get('cores_per_gpu'), '.1f')} cores per "
                     f"{'GPU' if report['mode'] == 'gpu' else 'device (CPU run)'}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and steps (CI)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=None, help="batch (recipe: 64)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip model variants once this much time has passed")
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default: WORKDIR/gpu_check.json)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip part 4")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                        help=f"comma-separated subset of {','.join(v.name for v in VARIANTS)}")
    args = parser.parse_args(argv)
    for name, known in (("models", list(MODELS)), ("variants", [v.name for v in VARIANTS])):
        picked = getattr(args, name).split(",")
        unknown = sorted(set(picked) - set(known))
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
        setattr(args, name, picked)
    defaults = (20, 3, 16, 60.0) if args.smoke else (60, 10, 64, 330.0)
    for name, value in zip(("steps", "warmup", "batch", "budget_s"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run with --device cpu --smoke", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nfpipe-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # one thread in smoke mode: on a shared CPU, two OpenMP threads that wait for each other
    # made tiny steps 20x slower
    torch.set_num_threads(1 if args.smoke else max(1, min(os.cpu_count() or 1, 8)))
    gpu = device.type == "cuda"
    notes = [] if gpu else ["CPU run: no CUDA, cuDNN, NCCL, TF32 or peak GPU memory; "
                            "GPU figures not measured"]
    torch.backends.cuda.matmul.allow_tf32 = True
    n = 8192 if gpu else 512
    reps = 10 if gpu else 3  # each the best of `reps` timings of 4 products after 3 warm-up ones
    peaks = {"fp32": mm_peak(torch.float32, n, reps, device, calls=4, warmup=3)["best"],
             "bf16": mm_peak(torch.bfloat16, n, reps, device, calls=4, warmup=3)["best"],
             "fp32_label": "TF32" if gpu else "fp32 (CPU)", "n": n}
    report = {"mode": "gpu" if gpu else ("cpu-smoke" if args.smoke else "cpu"),
              "environment": environment(device), "peak_flops": peaks, "notes": notes,
              "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"gpu-check: {report['environment']}", flush=True)
    report["models"] = model_rows(args, device, peaks, started + args.budget_s)
    report["profile"] = profile_top_ops(args, device, report["models"])
    if args.no_pipeline:
        report["pipeline"] = {"error": "skipped (--no-pipeline)"}
    else:
        try:
            report["pipeline"] = pipeline_check(args, device, workdir)
            report["loader"] = loader_rate(report["pipeline"]["manifest"], args.batch)
        except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as err:
            report["pipeline"] = {"error": str(err)}
    glow = [r["images_per_s"] for r in report["models"]
            if r["model"] == "glow" and "images_per_s" in r]
    if report.get("loader") and glow and gpu:
        report["loader"]["gpu_images_per_s"] = max(glow)
        report["loader"]["cores_per_gpu"] = max(glow) / report["loader"]["images_per_cpu_s"]
    report["wall_s"] = time.perf_counter() - started
    text = summary(report)
    print(text + f"\n  done in {report['wall_s']:.0f}s", flush=True)
    out = args.json or workdir / "gpu_check.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out)
    print(f"gpu-check: JSON in {out}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir / "work" / "ray_results", ignore_errors=True)
    return 0 if "error" not in report["pipeline"] or args.no_pipeline else 1


if __name__ == "__main__":
    sys.exit(main())
