"""FAB-T in L2 (``--attack fab --norm l2``) beside the default, against standard AutoAttack in L2:
what the default misses in L2 and FAB finds, and what FAB costs.

    python benchmarks/fab_l2.py --models tiny,pgd-at-l2-digits --eps 1.5,2,2.5

Per model (benchmarks/ensemble_savings.py's) and eps, on the first --limit digits test images:
AutoAttack's accuracy (cached by benchmarks/aa_reference.py, run with --norm l2 over the grid
0.5..3 first), the default's (the curve over that grid), FAB-T's alone, the worst case of the
default and FAB-T per point, the points AutoAttack fools that both leave robust, and FAB-T's
backward and forward passes per point (counted as AutoAttack's are) and seconds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aa_reference import Counted, reference  # noqa: E402
from ensemble_savings import models  # noqa: E402

from robustgan.attacks import AttackSettings, robust_mask, worst_case  # noqa: E402
from robustgan.data import load  # noqa: E402

GRID = [0.5, 1, 1.5, 2, 2.5, 3]  # the L2 grid of BENCHMARKS.md, "L2"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,pgd-at-l2-digits")
    parser.add_argument("--eps", default="1.5,2,2.5")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args(argv)
    x, y = load("digits", split="test")
    x, y = x[:args.limit], y[:args.limit]
    print("| model | eps | AutoAttack | default | FAB-T | default + FAB-T | fooled by AutoAttack only | "
          "FAB-T backward / pt | forward / pt | seconds |")
    print("| --- " * 10 + "|")
    for name, model in models(args.models.split(",")).items():
        aa = reference(name, model, x, y, GRID, norm="l2")
        ours = worst_case(model, x, y, GRID, AttackSettings(norm="l2"))
        for e in (float(v) for v in args.eps.split(",")):
            k = GRID.index(e)
            counted = Counted(model).eval()
            start = time.perf_counter()
            fab = robust_mask(counted, x, y, e, AttackSettings("fab", norm="l2"))
            seconds = time.perf_counter() - start
            both = ours.correct[:, k] & fab
            cells = [100 * aa[e]["correct"].float().mean(), 100 * ours.correct[:, k].float().mean(),
                     100 * fab.float().mean(), 100 * both.float().mean()]
            print(f"| {name} | {e:g} | " + " | ".join(f"{c:.1f}" for c in cells) +
                  f" | {int((both & ~aa[e]['correct']).sum())} | {counted.backwards / len(y):.0f} | "
                  f"{counted.forwards / len(y):.0f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
