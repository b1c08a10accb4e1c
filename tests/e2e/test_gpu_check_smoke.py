"""`benchmarks/gpu_check.py --device cpu --smoke`, as CI runs it: the GPU check does not rot.

On CPU it times the recipes' variants on tiny shapes (torch.compile skipped, saying why). Its
pipeline part (the cifar10 profile for one epoch, promotion, scoring the champion on CPU) is
left out with --no-pipeline: that flow is the quickstart e2e's (tests/e2e/), and a model
reloaded from the registry scoring as evaluated is tests/deploy/'s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_cpu_smoke_mode_writes_the_whole_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
         "--smoke", "--no-pipeline", "--steps", "8", "--warmup", "1", "--budget-s", "8",
         "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["mode"] == "cpu-smoke"
    assert report["environment"]["gpu"].startswith("none")
    assert report["peak_flops"]["fp32"] > 0 and report["peak_flops"]["bf16"] > 0
    rows = {(r["model"], r["variant"]): r for r in report["models"]}
    assert {m for m, _ in rows} == {"glow", "realnvp", "fvae"}
    for model in ("glow", "realnvp", "fvae"):
        assert "torch.compile on CPU" in rows[model, "bf16+compile"]["skipped"]
    timed = [r for r in report["models"] if "images_per_s" in r]
    assert {"glow"} <= {r["model"] for r in timed}  # later ones may be skipped for time
    for row in timed:
        assert row["loss_finite"] and row["images_per_s"] > 0 and 0 < row["mfu"] < 1
        if row["variant"] != "fp32":
            assert row["agrees_with_fp32"], row
    assert report["profile"] and sum(op["share"] for op in report["profile"]) <= 1

    assert report["pipeline"] == {"error": "skipped (--no-pipeline)"}
    assert "GPU figures not measured" in report["notes"][0]
    assert "matmul peak:" in proc.stdout and " img/s " in proc.stdout  # the summary table
