"""The figures of `gpu_check.py`: peak FLOP/s by GPU and dtype, model-FLOP utilisation, kernels
per step and device-busy fraction from a profiler trace's kernel events, and an atomic JSON
write. Plain functions of their inputs, so that the CPU smoke run exercises all of them."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

# Dense peak tensor-core FLOP/s by GPU name (substring, first match) and dtype, from NVIDIA's
# data sheets (SXM parts, without sparsity). "tf32" is an fp32 step with TF32 allowed (our
# fp32 rows); "fp32" is the plain CUDA-core figure.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
}


def peak_flops(gpu_name: str, dtype: str, measured: dict[str, float]) -> tuple[float, str]:
    """(FLOP/s, where it came from) of `dtype` ("bf16", "tf32" or "fp32") on this device:
    the data-sheet figure of a known GPU, else the matmul peak measured in this run."""
    for key, table in PEAK_TFLOPS.items():
        if key in gpu_name:
            return table[dtype] * 1e12, f"{key} data sheet, {dtype} dense"
    fallback = "bf16" if dtype == "bf16" else "fp32"
    return measured[fallback], f"measured {fallback} matmul peak (no data-sheet figure)"


def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Model FLOPs of one forward and backward per image: convolutions and matmuls, as
    `torch.utils.flop_counter` counts them from their shapes (elementwise work counts 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        model(x).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def merged_length(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals (overlapping kernels count once)."""
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def kernel_intervals(trace: dict) -> list[tuple[float, float]]:
    """The (start, end) microseconds of every device kernel in a Chrome trace exported by
    `torch.profiler` (category "kernel"; annotation spans and memcpys excluded)."""
    return [(e["ts"], e["ts"] + e["dur"]) for e in trace.get("traceEvents", [])
            if e.get("cat") == "kernel" and "dur" in e]


def profile_steps(step: Callable[[int], object], steps: int, device: torch.device,
                  sync: Callable[[], None]) -> dict:
    """Kernels per step and the device time per step in which some kernel ran (kernel
    intervals merged where they overlap: concurrent kernels count once), from torch.profiler's
    kernel events over `steps` profiled steps. None on a CPU, which has no kernel events."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync()
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        sync()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        kernels = kernel_intervals(json.loads(path.read_text()))
    if device.type != "cuda":
        return {"kernels_per_step": None, "kernel_ms_per_step": None}
    return {"kernels_per_step": len(kernels) / steps,
            "kernel_ms_per_step": merged_length(kernels) / steps / 1e3}


def device_busy(kernel_ms_per_step: float | None, ms_per_step: float) -> float | None:
    """The fraction of a step's wall time (timed without the profiler, whose overhead
    slows the host) in which the device ran a kernel."""
    if kernel_ms_per_step is None:
        return None
    return min(1.0, kernel_ms_per_step / ms_per_step)
