"""The default's FAB-T stage in L2 (``fab.fab_stage``) against standard AutoAttack in L2: what the
stage finds, what its gate and give-up rule cost, and why they hold.

    python benchmarks/fab_l2.py --models tiny,pgd-at-l2-digits
    python benchmarks/fab_l2.py --models tiny,pgd-at-l2-digits --give-up

Per model (benchmarks/ensemble_savings.py's), the curve over the L2 grid 0.5..3 on the first
--limit digits test images, each point's accuracy against AutoAttack's (cached by
benchmarks/aa_reference.py, run with --norm l2 over that grid first): the default; the default
without its FAB stage (``Savings(fab_close=0)``); and with FAB-T on every point still robust, its
whole budget (``fab_close=1, fab_give_up=()``), with their backward and forward passes per point
(counted as AutoAttack's are), the stage's own, and the points AutoAttack fools that each leaves
robust.

``--give-up``: on the points the gate takes (margin ratio <= ``stages.CLOSE`` at their largest
robust eps, after the gradient stages), FAB-T towards each of the 9 targets for 100 steps without
giving up; per (point, target) row, its closest example's distance / eps after 10, 25 and 50 steps,
for the rows that end within eps (the rule must keep every one) and for the others (what it saves)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aa_reference import Counted, reference  # noqa: E402
from ensemble_savings import models  # noqa: E402

from robustgan.attacks import AttackSettings, Savings, worst_case  # noqa: E402
from robustgan.attacks.apgd import margin, target_order  # noqa: E402
from robustgan.attacks.fab import fab_targeted  # noqa: E402
from robustgan.attacks.stages import CLOSE  # noqa: E402
from robustgan.data import load  # noqa: E402

GRID = [0.5, 1, 1.5, 2, 2.5, 3]  # the L2 grid of BENCHMARKS.md, "L2"
VARIANTS = {"default": Savings(), "no FAB stage": Savings(fab_close=0),
            "FAB-T on every robust point, in full": Savings(fab_close=1, fab_give_up=())}


def curves(name, model, x, y) -> None:
    aa = reference(name, model, x, y, GRID, norm="l2")
    fooled_by_aa = ~torch.stack([aa[e]["correct"] for e in GRID], 1)
    print(f"| {name} | standard AutoAttack | " + " | ".join(f"{100 * (~fooled_by_aa[:, k]).float().mean():.1f}"
                                                             for k in range(len(GRID))) + " | | | | |")
    for label, savings in VARIANTS.items():
        counted = Counted(model).eval()
        start = time.perf_counter()
        found = worst_case(counted, x, y, GRID, AttackSettings(norm="l2"), savings=savings)
        seconds = time.perf_counter() - start
        missed = (found.correct & fooled_by_aa).sum(0).tolist()
        print(f"| | {label} | " + " | ".join(f"{a * 100:.1f}" for a in found.accuracy) +
              f" | {counted.backwards / len(y):.0f} | {counted.forwards / len(y):.0f} | "
              f"{found.by_stage.get('fab', 0) / len(y):.0f} | {missed} | {seconds:.0f} |", flush=True)


def give_up(name, model, x, y) -> None:
    found = worst_case(model, x, y, GRID, AttackSettings(norm="l2"), savings=Savings(fab_close=0), keep_examples=True)
    at = found.correct.sum(1) - 1
    idx = (at >= 0).nonzero()[:, 0]
    xf = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    with torch.no_grad():
        ratio = margin(model(found.examples[at[idx], idx]), y[idx]) / margin(model(xf[idx]), y[idx])
        idx = idx[ratio <= CLOSE]
        order = target_order(model(xf[idx]), y[idx])
    radius = torch.tensor([GRID[k] for k in at[idx].tolist()])
    sizes = {steps: torch.stack([fab_targeted(model, xf[idx], y[idx], order[:, t], steps=steps)[1]
                                 for t in range(order.shape[1] - 1)], 1) / radius[:, None] for steps in (10, 25, 50, 100)}
    within = sizes[100] <= 1
    print(f"{name}: {len(idx)} points gated, {int(within.sum())} of {within.numel()} rows end within eps")
    for steps in (10, 25, 50):
        ended_in, others = sizes[steps][within], sizes[steps][~within]
        quartiles = others[others.isfinite()].quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
        most = f"{ended_in.max():.2f} eps" if len(ended_in) else "- (none)"
        print(f"  after {steps} steps: rows ending within eps at most {most}; the others' "
              f"quartiles {', '.join(f'{q:.2f}' for q in quartiles)} eps ({int((~others.isfinite()).sum())} none found)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,pgd-at-l2-digits")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--give-up", action="store_true", help="the give-up rule's evidence instead of the curves")
    args = parser.parse_args(argv)
    x, y = load("digits", split="test")
    x, y = x[:args.limit], y[:args.limit]
    if not args.give_up:
        print("| model | attack | " + " | ".join(f"{e:g}" for e in GRID) + " | backward / pt | forward / pt | "
              "FAB stage backward / pt | fooled by AutoAttack only, per eps | seconds |")
        print("| --- " * (len(GRID) + 7) + "|")
    for name, model in models(args.models.split(",")).items():
        (give_up if args.give_up else curves)(name, model, x, y)


if __name__ == "__main__":
    main()
