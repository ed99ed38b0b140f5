"""Seed, order and float-path stress for the test suite (not part of `make test`; about 40
minutes on 2 cores, the margins another 15 at 3 seeds).

    .venv/bin/python tests/stress.py                 # 20 seeds, then the four orders
    .venv/bin/python tests/stress.py --seeds 5 --no-orders
    .venv/bin/python tests/stress.py --margins --seeds 3   # the planted checks' margins per float path

1. Every test marked `statistical` (a requirement on outcomes of random draws) runs under
   ``--seeds`` seeds (ROBUSTGAN_TEST_SEEDS: each seed is its own seed plus k, k = 0..n-1), at
   one thread (two xdist workers, one thread each) and at two (one process).
2. The whole suite in four orders and schedules: one process (-p no:xdist), two workers
   (-n 2), and shuffled (pytest-random-order, global bucket) under two seeds.

Prints a markdown table: test, seeds tried, failures (per thread count), and each order's
verdict. Exit 1 if anything failed.

3. ``--margins`` instead: the planted-masking and honest-model tests of tests/test_checks.py on
   every float path of PATHS (oneDNN on and off, oneDNN capped at AVX2 kernels, the models in
   float64, at one thread; the default at two) under ``--seeds`` seeds, each check's distance to its threshold
   recorded (tests/planted.py ``margin``). Prints, per case and check that must warn
   ("required") or must not ("forbidden"), the worst ratio (effect over its minimum effect,
   or value over its bar) and p-value over paths and seeds, and whether that is comfortable
   (CONTRIBUTING.md, "Margins": COMFORT). Exit 1 where one is not.
"""

from __future__ import annotations

import argparse
import json
import math
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
# The float paths a CPU can take: oneDNN's kernels (their ISA picked at run time: AVX-512 or AVX2),
# torch's own with oneDNN off, and float64 models as the extreme reference
# (environment, pytest schedule) per path: one thread per xdist worker, as `make test` runs, and
# the default path once more at two threads in one process (another reduction order)
ONE_THREAD = ["-n", "2"]
PATHS = {"default": ({}, ONE_THREAD), "onednn-off": ({"ROBUSTGAN_MKLDNN": "0"}, ONE_THREAD),
         "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, ONE_THREAD),
         "float64": ({"ROBUSTGAN_TEST_FLOAT64": "1"}, ONE_THREAD), "default-2-threads": ({}, ["-p", "no:xdist"])}
# Comfortable: a required warning at least 1.5x its minimum effect (or bar) with p at most a tenth
# of alpha; a forbidden one at most 2/3 of it, or p at least ten times alpha
COMFORT, ALPHA = 1.5, 0.01


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


def comfortable(role: str, ratio: float, p: float | None) -> bool:
    if role == "required":
        return ratio >= COMFORT and (p is None or p <= ALPHA / 10)
    return ratio <= 1 / COMFORT or (p is not None and p >= 10 * ALPHA)


def margins(seeds: int, select: str) -> int:
    """The planted checks' margins on every float path (module docstring, 3.)."""
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "margins.jsonl"
        for name, (env, schedule) in PATHS.items():
            print(f"float path {name}: {seeds} seed(s) ...", flush=True)
            code, seconds = run(["tests/test_checks.py", "-m", "statistical", *schedule,
                                 "-k", select or "planted_masking or honest"],
                                env | {"ROBUSTGAN_TEST_SEEDS": str(seeds), "ROBUSTGAN_MARGINS": str(records),
                                       "ROBUSTGAN_FLOAT_PATH": name}, Path(tmp) / f"{name}.xml")
            print(f"  {seconds:.0f} s (pytest exit {code})", flush=True)
            if code not in (0, 1):  # 1: a test failed (the table shows why); anything else: nothing ran
                print(f"pytest could not run on path {name} (exit {code})")
                return 2
        found = defaultdict(list)
        for line in records.read_text().splitlines() if records.exists() else []:
            r = json.loads(line)
            found[(r["case"], r["check"], r["role"])].append(r)
    missing = set(PATHS) - {r["path"] for runs in found.values() for r in runs}
    if missing:
        print(f"no margins recorded on path(s) {', '.join(sorted(missing))}")
        return 2
    bad = 0
    print("\n| case | check | must | worst ratio | worst p | runs | comfortable |\n| --- | --- | --- | --- | --- | --- | --- |")
    for (case, check, role), runs in sorted(found.items()):
        if role == "allowed":
            continue
        sign = 1 if role == "required" else -1  # the worst run: the least on the warning side, or the most
        worst = min(runs, key=lambda r: (sign * r["ratio"], -sign * (r["p"] if r["p"] is not None else 0)))
        p_values = [r["p"] for r in runs if r["p"] is not None]
        worst_p = (max(p_values) if role == "required" else min(p_values)) if p_values else None
        ok = all(comfortable(role, r["ratio"], r["p"]) for r in runs)
        bad += not ok
        if role == "required" or not ok:
            p_text = "-" if worst_p is None else f"{worst_p:.2g}"
            ratio = "inf" if math.isinf(worst["ratio"]) else f"{worst['ratio']:.2f}"
            print(f"| {case} | {check} | {'warn' if role == 'required' else 'pass'} | {ratio} ({worst['path']}) | "
                  f"{p_text} | {len(runs)} | {'yes' if ok else 'NO'} |")
    print(f"\n{bad} check(s) not comfortable; forbidden checks not listed are comfortable on every run")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--margins", action="store_true", help="the planted checks' margins on every float path")
    parser.add_argument("--no-orders", action="store_true", help="only the seed sweep")
    parser.add_argument("-k", dest="select", default="", help="only the statistical tests pytest -k selects")
    args = parser.parse_args()
    if args.margins:
        return margins(args.seeds, args.select)
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
