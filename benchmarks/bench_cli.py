"""Start-up time of the command line: `nfpipe --help` and `nfpipe config show`, against a bare
Python start and `import torch` (what the CLI used to pay before its imports were made lazy).

    .venv/bin/python benchmarks/bench_cli.py [--repeat 7]

Each command runs as its own process, `--repeat` times; the median wall time is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "nfpipe --help": [str(BIN / "nfpipe"), "--help"],
    "nfpipe config show": [str(BIN / "nfpipe"), "config", "show", str(REPO / "pipeline.yaml")],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def median_seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print("| command | median wall time (s) |\n| --- | --- |")
    for name, command in COMMANDS.items():
        print(f"| `{name}` | {median_seconds(command, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
