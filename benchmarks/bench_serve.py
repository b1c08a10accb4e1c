"""Serving: `nfpipe deploy serve` against `mlflow models serve`, same model, same run.

The quickstart's RealNVP (pipeline.yaml's model on 8x8 digits; untrained weights score at the
same speed) is registered in a temporary SQLite registry and served by both servers at once,
each a real process on 127.0.0.1. Measured, alternating between the servers:

* `score` requests of 64 images (k=1): latency p50/p99 and requests/s with 1 client and with
  8 concurrent clients;
* fairness: one heavy request (1024 images, k=4) and, 0.5 s later, 20 small ones (1 image):
  latency p50/p99 of the small ones while the heavy one runs.

    .venv/bin/python benchmarks/bench_serve.py [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NAME = "bench-realnvp"


def register(folder: Path) -> str:
    """The quickstart RealNVP registered as NAME@champion; the tracking URI."""
    import torch

    from deploy.config import PromoteConfig
    from deploy.registry import Candidate, register_and_promote
    from flows import build_model
    from flows.io import save_model
    from pipeline.config import load_config

    torch.manual_seed(0)
    quickstart = load_config(REPO / "pipeline.yaml").train.model
    cfg = quickstart.model_copy(update={"image_shape": (1, 8, 8), "n_bins": 17})
    bundle = save_model(build_model(cfg).eval(), folder / "bundle", {"dataset": "digits"})
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("bench", (folder / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    register_and_promote(uri, NAME, bundle, Candidate(3.0, 3.0, "digits", "fp", run_id),
                         PromoteConfig())
    return uri


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], folder: Path, uri: str, log: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(folder / log, "wb") as out:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, path: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + path, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} not ready")


def score(url: str, images: list, k: int = 1) -> float:
    start = time.perf_counter()
    response = requests.post(url + "/invocations", timeout=600,
                             json={"inputs": images, "params": {"k": k}})
    response.raise_for_status()
    return time.perf_counter() - start


def load(url: str, images: list, n: int, clients: int) -> dict[str, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda _: score(url, images), range(n)))
    wall = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "rps": n / wall}


def fairness(url: str, heavy: list, small: list) -> dict[str, float]:
    with ThreadPoolExecutor(21) as pool:
        big = pool.submit(score, url, heavy, 4)
        time.sleep(0.5)
        latencies = list(pool.map(lambda _: score(url, small), range(20)))
        heavy_s = big.result()
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"small_p50_ms": p50 * 1000, "small_p99_ms": p99 * 1000, "heavy_s": heavy_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nfpipe-bench-serve-"))
    procs = []
    try:
        uri = register(folder)
        ports = {"nfpipe deploy serve": free_port(), "mlflow models serve": free_port()}
        procs.append(start([sys.executable, "-m", "pipeline.cli", "deploy", "serve", "--model",
                            f"{NAME}@champion", "--port", str(ports["nfpipe deploy serve"])],
                           folder, uri, "nfpipe.log"))
        procs.append(start([str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                            f"models:/{NAME}@champion", "--env-manager", "local", "--port",
                            str(ports["mlflow models serve"])], folder, uri, "mlflow.log"))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        wait_ready(urls["nfpipe deploy serve"], "/ready")
        wait_ready(urls["mlflow models serve"], "/ping")
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 17, (64, 1, 8, 8)).tolist()
        heavy = rng.integers(0, 17, (1024, 1, 8, 8)).tolist()
        for url in urls.values():
            score(url, batch)  # warm up
        rows = {name: {} for name in urls}
        for clients, n in ((1, args.requests), (8, 2 * args.requests)):
            for name, url in urls.items():
                rows[name][clients] = load(url, batch, n, clients)
        fair = {name: fairness(url, heavy, batch[:1]) for name, url in urls.items()}
        report(rows, fair)
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
        shutil.rmtree(folder, ignore_errors=True)


def report(rows: dict, fair: dict) -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f}; nproc {os.cpu_count()}")
    print("| server | clients | p50 ms | p99 ms | requests/s |\n| --- | --- | --- | --- | --- |")
    for name, by_clients in rows.items():
        for clients, r in by_clients.items():
            print(f"| {name} | {clients} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                  f"{r['rps']:.2f} |")
    print("\n| server | heavy (1024 images, k=4) s | 20 small: p50 ms | p99 ms |\n"
          "| --- | --- | --- | --- |")
    for name, r in fair.items():
        print(f"| {name} | {r['heavy_s']:.2f} | {r['small_p50_ms']:.0f} | "
              f"{r['small_p99_ms']:.0f} |")


if __name__ == "__main__":
    main()
