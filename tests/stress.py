"""Seed and order stress for the test suite (not part of `make test`; about 40 minutes on 2 cores).

    .venv/bin/python tests/stress.py                 # 20 seeds, then the four orders
    .venv/bin/python tests/stress.py --seeds 5 --no-orders

1. Every test marked `statistical` (a requirement on outcomes of random draws) runs under
   ``--seeds`` seeds (ROBUSTGAN_TEST_SEEDS: each seed is its own seed plus k, k = 0..n-1), at
   one thread (two xdist workers, one thread each) and at two (one process).
2. The whole suite in four orders and schedules: one process (-p no:xdist), two workers
   (-n 2), and shuffled (pytest-random-order, global bucket) under two seeds.

Prints a markdown table: test, seeds tried, failures (per thread count), and each order's
verdict. Exit 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import without_sweep  # noqa: E402  (the seed fixture's own reading of a node id)
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def run(args: list[str], env: dict, report: Path) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run([*PYTEST, *args, f"--junitxml={report}"], cwd=ROOT, env=os.environ | env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)", flush=True)
    return done.returncode, time.perf_counter() - start


def outcomes(report: Path) -> dict[str, list[bool]]:
    """{test (without its seed parameter): [passed?] per seed tried}."""
    found = defaultdict(list)
    for case in ET.parse(report).iter("testcase"):
        name = without_sweep(case.get("name"))
        failed = case.find("failure") is not None or case.find("error") is not None
        if case.find("skipped") is None:
            found[f"{case.get('classname').rsplit('.', 1)[-1]}::{name}"].append(not failed)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--no-orders", action="store_true", help="only the seed sweep")
    parser.add_argument("-k", dest="select", default="", help="only the statistical tests pytest -k selects")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        sweeps = {}
        for threads, schedule in ((1, ["-n", "2"]), (2, ["-p", "no:xdist"])):
            print(f"seed sweep: {args.seeds} seeds at {threads} thread(s) ...", flush=True)
            report = Path(tmp) / f"sweep{threads}.xml"
            code, seconds = run(["-m", "statistical", *(["-k", args.select] if args.select else []), *schedule],
                                {"ROBUSTGAN_TEST_SEEDS": str(args.seeds)}, report)
            sweeps[threads] = outcomes(report)
            failed |= code != 0
            print(f"  {seconds:.0f} s", flush=True)
        print("\n| test | seeds tried (1 / 2 threads) | failures (1 / 2 threads) |\n| --- | --- | --- |")
        for test in sorted(set(sweeps[1]) | set(sweeps[2])):
            tried = [len(sweeps[t].get(test, [])) for t in (1, 2)]
            fails = [sweeps[t].get(test, []).count(False) for t in (1, 2)]
            print(f"| {test} | {tried[0]} / {tried[1]} | {fails[0]} / {fails[1]} |")
        if not args.no_orders:
            orders = {"one process (-p no:xdist)": ["-p", "no:xdist"], "two workers (-n 2)": ["-n", "2"],
                      **{f"shuffled, seed {s} (-n 2)": ["-n", "2", "--random-order-bucket=global",
                                                       f"--random-order-seed={s}"] for s in (1, 2)}}
            rows = []
            for label, order in orders.items():
                print(f"order: {label} ...", flush=True)
                report = Path(tmp) / "order.xml"
                code, seconds = run(order, {}, report)
                results = outcomes(report)
                bad = sorted(t for t, ok in results.items() if not all(ok))
                rows.append(f"| {label} | {len(results)} | {', '.join(bad) or 'none'} | {seconds:.0f} s |")
                failed |= code != 0
            print("\n| order | tests | failed | wall |\n| --- | --- | --- | --- |", *rows, sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
