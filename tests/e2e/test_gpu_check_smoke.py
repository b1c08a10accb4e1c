"""`benchmarks/gpu_check.py --device cpu --smoke`, as CI runs it: the GPU check does not rot.

On CPU it runs every row that can run there on a tiny Glow (the CUDA-graph and compile rows
say "not run on cpu"), the same-weights bf16 vs fp32 check and the trial-sharing row (2 trial
processes against 1), rewriting its JSON after every row; the test reads that JSON while the
check runs and sees the rows arrive one by one. The pipeline part (`--pipeline`) is the
quickstart e2e's flow and is not run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow

MEASURED_KEYS = {"images_per_s", "ms_per_step", "mfu", "peak_mem_gib", "kernels_per_step",
                 "device_busy", "peak_tflops", "peak_source"}


def snapshots_while_running(proc: subprocess.Popen, out) -> list[tuple[str, int]]:
    """(status, rows) of every distinct JSON the running check wrote, polled every 20 ms."""
    seen: list[tuple[str, int]] = []
    while proc.poll() is None:
        if out.exists():
            report = json.loads(out.read_text())  # written atomically: never half a file
            snap = (report["status"], len(report["rows"]))
            if not seen or seen[-1] != snap:
                seen.append(snap)
        time.sleep(0.02)
    return seen


def test_cpu_smoke_mode_writes_every_row_as_it_goes(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
         "--smoke", "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    seen = snapshots_while_running(proc, out)
    stdout = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, stdout[-3000:]
    report = json.loads(out.read_text())

    running = [n for status, n in seen if status == "running"]
    assert len(running) >= 3 and running == sorted(running), seen  # rows arrive one by one
    assert report["status"] == "complete" and report["mode"] == "cpu-smoke"
    assert report["environment"]["gpu"].startswith("none")
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["fp32 @16", "fp32 @64", "bf16+cl @16", "bf16+cl @64", "graph @16",
                          "graph @64", "share @16", "compile @64", "compile+graph @64"]
    for name in ("graph @16", "graph @64", "compile @64", "compile+graph @64"):
        assert rows[name]["status"].startswith("not run on cpu"), rows[name]
    for name in ("fp32 @16", "fp32 @64", "bf16+cl @16", "bf16+cl @64", "share @16"):
        row = rows[name]
        assert row["status"] == "measured", row
        assert MEASURED_KEYS <= set(row), row
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and 0 < row["mfu"] < 1
        # no GPU: no device memory, kernels or device time to report
        assert row["peak_mem_gib"] is None and row["kernels_per_step"] is None
        assert row["device_busy"] is None
    for name in ("fp32 @16", "bf16+cl @64"):
        assert rows[name]["loss_finite"] and rows[name]["gflop_per_image"] > 0
    share = rows["share @16"]
    assert share["trials"] == 2 and len(share["per_trial_images_per_s"]) == 2
    assert share["single_images_per_s"] > 0 and share["speedup"] > 0

    check = report["bf16_vs_fp32"]
    assert check["agrees"] and check["loss_rel"] <= check["loss_tol"] == 0.005
    assert 0 < check["grad_rel_l2"] <= check["grad_tol"] == 0.05  # bf16 nets do differ
    assert "GPU figures not measured" in report["notes"][0]
    assert "same weights, bf16 vs fp32" in stdout and " img/s " in stdout  # the summary


@pytest.fixture(scope="module")
def gpu_check():
    """benchmarks/gpu_check.py imported in this process (it puts benchmarks/ on sys.path)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check as module

    return module


def test_a_row_that_would_not_fit_the_time_limit_is_skipped_and_says_so(gpu_check, tmp_path):
    args = Namespace(smoke=True, steps=None, warmup=None, rows=gpu_check.KINDS, time_limit=30.0)
    run = gpu_check.Run(args, torch.device("cpu"), gpu_check.SMOKE_RECIPE, (3, 16, 16),
                        {"fp32": 1e9, "bf16": 1e9}, deadline=time.perf_counter() + 5.0,
                        s_per_image=0.1)  # 16 images x 15 steps x 0.1 s: ~24 s > 5 s left
    entry = gpu_check.run_row(run, gpu_check.Row("fp32", 16), tmp_path)
    assert entry["status"].startswith("skipped (time limit): needs ~24s"), entry
    assert "of --time-limit 30s left" in entry["status"]


def test_device_busy_merges_overlapping_kernels_and_ignores_other_events(gpu_check):
    from gpu_metrics import device_busy, kernel_intervals, merged_length

    trace = {"traceEvents": [
        {"cat": "kernel", "ts": 0, "dur": 10}, {"cat": "kernel", "ts": 5, "dur": 10},
        {"cat": "kernel", "ts": 30, "dur": 5}, {"cat": "user_annotation", "ts": 0, "dur": 100},
        {"cat": "gpu_memcpy", "ts": 40, "dur": 50}, {"cat": "cpu_op", "ts": 0, "dur": 99}]}
    intervals = kernel_intervals(trace)
    assert merged_length(intervals) == 20  # [0, 15) and [30, 35)
    assert device_busy(0.02, 0.04) == 0.5 and device_busy(None, 1.0) is None
