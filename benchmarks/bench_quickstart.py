"""Wall time of the quickstart (`nfpipe run` on pipeline.yaml) by stage, and the share of it that
is Ray start-up and MLflow overhead.

    .venv/bin/python benchmarks/bench_quickstart.py [--keep DIR]

Runs the whole default pipeline in a fresh temp folder (its own Ray, its own SQLite MLflow), reads
each stage's time from its record, then measures in separate processes what a local Ray start
and stop cost and what creating the MLflow store and logging one training run's metrics cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("data_prep", "train", "tune", "evaluate", "promote", "deploy")

RAY_START_STOP = """
import time, ray
t = time.perf_counter()
ray.init(address="local", num_cpus=2, include_dashboard=True)
ray.get(ray.remote(lambda: 1).remote())
up = time.perf_counter() - t
t = time.perf_counter()
ray.shutdown()
print(up, time.perf_counter() - t)
"""

MLFLOW_OVERHEAD = """
import sys, time, mlflow
from mlflow.entities import Metric
uri, n_metrics = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
mlflow.set_tracking_uri(uri)
exp = mlflow.create_experiment("bench")
store = time.perf_counter() - t
client = mlflow.MlflowClient(uri)
t = time.perf_counter()
run = client.create_run(exp)
metrics = [Metric("m", float(i), 0, i) for i in range(n_metrics)]
for i in range(0, n_metrics, 200):
    client.log_batch(run.info.run_id, metrics=metrics[i:i + 200])
client.set_terminated(run.info.run_id)
print(store, time.perf_counter() - t)
"""


def run_quickstart(workdir: Path) -> float:
    shutil.copy(REPO / "pipeline.yaml", workdir / "pipeline.yaml")
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "nfpipe"), "run"], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def stage_seconds(workdir: Path) -> dict[str, float]:
    records = workdir / ".nfpipe" / "records"
    return {s: json.loads((records / f"{s}.json").read_text())["seconds"] for s in STAGES}


def python_seconds(code: str, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return [float(v) for v in out.stdout.split()[-2:]]


def logged_metric_count(workdir: Path) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=100)
    return sum(
        len(client.get_metric_history(r.info.run_id, key))
        for r in runs
        for key in r.data.metrics
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, default=None, help="run here and keep the results")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="nfpipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    total = run_quickstart(workdir)
    stages = stage_seconds(workdir)
    ray_up, ray_down = python_seconds(RAY_START_STOP)
    n_metrics = logged_metric_count(workdir)
    store_s, log_s = python_seconds(
        MLFLOW_OVERHEAD, f"sqlite:///{workdir / 'mlflow-bench.db'}", str(n_metrics)
    )
    print(f"quickstart wall time: {total:.1f} s")
    for name, seconds in stages.items():
        print(f"  {name:<10} {seconds:7.1f} s  ({seconds / total:5.1%})")
    other = total - sum(stages.values())
    print(f"  {'CLI+imports':<10} {other:7.1f} s  ({other / total:5.1%})")
    print(f"local Ray start (dashboard on, first task) {ray_up:.1f} s, shutdown {ray_down:.1f} s")
    print(f"MLflow: new SQLite store + experiment {store_s:.1f} s; "
          f"{n_metrics} metric values of this run logged in batches {log_s:.1f} s")
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
