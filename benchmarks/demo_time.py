"""Wall time of the main job, `robustgan demo` (goal: under 5 minutes on 2 CPU cores).

    python benchmarks/demo_time.py [--quick]

Runs the demo in a fresh folder and prints the wall time with the machine's core count
and torch version (record it in BENCHMARKS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch


def main():
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robustgan", "demo", "--out", f"{tmp}/demo", *(["--quick"] if quick else [])],
                       check=True)
        seconds = time.perf_counter() - start
    print(f"demo{' --quick' if quick else ''}: {seconds:.0f} s wall on {os.cpu_count()} cores, torch {torch.__version__}")


if __name__ == "__main__":
    main()
