"""Where the worst-case ensemble spends its passes, and what each saving gives up: the trade-off
curve (passes against points lost) behind the ensemble's defaults.

    python benchmarks/ensemble_savings.py                        # every model, 200 images, eps 0.05..0.5
    python benchmarks/ensemble_savings.py --models pgd-at-digits --limit 100 --savings no-give-up,default --queries 0
    python benchmarks/ensemble_savings.py --models pgd-at-l2-digits,tiny --norm l2 --eps 0.5,1,1.5,2,2.5,3 \
        --savings default,descend-no-give-up,close-1,no-give-up-close-1,ascending --queries 0   # savings in L2

The first savings named is the reference (by default ``ascending``: the grid upwards, every
robust eps of a point attacked in full).
Models: the digits PGD-AT preset (trained into runs/bench-eval as benchmarks/eval_engine.py does), the
tests' tiny PGD-AT CNN, the same behind a thresholding input layer (tests/planted.py: zero input
gradients), behind a half-thresholding one (partial masking), behind logits x 1e4, behind a
softmax, and behind logits compressed to sign(z)|z|^0.25 (``-compressed``; decision-preserving,
built to bend margin ratios). Each model is evaluated over the whole grid
by ``worst_case`` under each named ``Savings``, in one process; passes are counted by a wrapper
around the model, as AutoAttack's are: every row through the model is a forward pass, a row with
an input gradient also a backward pass. Prints per model and savings: accuracy per eps, the points
each saving loses against the ensemble without it (robust under the saving, fooled without), the
backward and forward passes per point, the passes per stage, and, with ``--breakdown``, the
passes spent on the points that end robust at every eps against those fooled somewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from robustgan.attacks import AttackSettings, Savings, worst_case  # noqa: E402
from robustgan.data import load  # noqa: E402
from robustgan.runtime import load_model  # noqa: E402
from tests.helpers import tiny_cnn, train_pgd_at  # noqa: E402
from tests.planted import HalfThresholdInputs, ThresholdInputs  # noqa: E402
from aa_reference import Counted  # noqa: E402 (benchmarks/ on the path)

GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
SAVINGS = {  # the first named is the reference the others' lost and gained points are counted against
    "no-give-up": Savings(give_up=(), descend=False),
    "ascending": Savings(descend=False),  # give-up (0.5, 0.25, 0.12, 0.06), the grid upwards
    "default": Savings(),  # the grid from the top down
    "give-up-0.5": Savings(give_up=(0.5,), descend=False),
    "give-up-0.3-0.04": Savings(give_up=(0.3, 0.15, 0.08, 0.04), descend=False),
    "give-up-0.7-0.08": Savings(give_up=(0.7, 0.35, 0.17, 0.08), descend=False),
    "first-target-0.5": Savings(first_target=0.5, descend=False),
    "descend-no-give-up": Savings(give_up=()),
    "no-restart": Savings(restart=None),
    "close-0.15": Savings(close=0.15),
    "descend-first-target-0.5": Savings(first_target=0.5),
    "close-1": Savings(close=1.0, halving=False),  # every target on every point, all its steps
    "no-give-up-close-1": Savings(give_up=(), close=1.0, halving=False),
    "restart-0.2": Savings(restart=0.2),
    "close-0.2": Savings(close=0.2),
    "first-warm": Savings(first_warm=True),
    # the Square stage's give-up checkpoints: lenient ones from query 500, and ones from query 100 on
    "square-give-up-0.5-0.1": Savings(square_give_up=((500, 0.5), (1000, 0.25), (2000, 0.1))),
    "square-give-up-from-100": Savings(square_give_up=((100, 0.3), (300, 0.15), (500, 0.1), (1000, 0.06),
                                                       (2000, 0.03))),
}


class Compressed(nn.Module):
    """sign(z) |z|^0.25 of the model's logits: the same decisions, margin ratios bent towards 1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x)
        return z.sign() * z.abs() ** 0.25


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


def models(names: list[str]) -> dict[str, nn.Module]:
    """The models asked for, each in eval mode."""
    found = {}
    if "pgd-at-digits" in names:
        from eval_engine import trained_run
        found["pgd-at-digits"] = load_model(trained_run("pgd-at-digits", ROOT / "runs" / "bench-eval", False))
    if "pgd-at-l2-digits" in names:
        from eval_engine import trained_run
        found["pgd-at-l2-digits"] = load_model(trained_run("pgd-at-l2-digits", ROOT / "runs" / "bench-eval", False))
    if "atgan-digits" in names:
        from eval_engine import trained_run
        found["atgan-digits"] = load_model(trained_run("atgan-digits", ROOT / "runs" / "bench-eval", False))
    if any(n.startswith("tiny") for n in names):
        x, y = load("digits", split="train")
        torch.manual_seed(0)
        tiny = tiny_cnn()
        train_pgd_at(tiny, x.float() / 255, y)
        tiny.eval()
        wrapped = {"tiny": tiny, "tiny-threshold": ThresholdInputs(tiny), "tiny-x1e4": Scaled(tiny, 1e4),
                   "tiny-softmax": nn.Sequential(tiny, nn.Softmax(1)), "tiny-compressed": Compressed(tiny),
                   "tiny-threshold-compressed": Compressed(ThresholdInputs(tiny)),
                   "tiny-half-threshold": HalfThresholdInputs(tiny),
                   "tiny-half-threshold-compressed": Compressed(HalfThresholdInputs(tiny))}
        found |= {n: m.eval() for n, m in wrapped.items() if n in names}
    return found


def measure(model: nn.Module, x, y, grid, settings: AttackSettings, savings: Savings) -> dict:
    counted = Counted(model).eval()
    start = time.perf_counter()
    found = worst_case(counted, x, y, grid, settings, savings=savings)
    return {"correct": found.correct, "clean": found.clean, "backward": counted.backwards, "forward": counted.forwards,
            "by_stage": found.by_stage, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="pgd-at-digits,tiny,tiny-threshold,tiny-x1e4,tiny-softmax")
    parser.add_argument("--savings", default="ascending,default,no-restart,no-give-up,descend-no-give-up")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--eps", default=",".join(map(str, GRID)))
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"), help="the threat model of --eps and every attack")
    parser.add_argument("--breakdown", action="store_true", help="passes on robust vs fooled points (default only)")
    parser.add_argument("--square-give-up", action="append", default=[], metavar="Q:R,...",
                        help="also run the default with the Square stage's give-up checkpoints replaced by these "
                             "(query:ratio pairs, e.g. 100:0.8,500:0.5,1000:0.25,2000:0.1); repeatable: the "
                             "trade-off curve of Square's forwards against points lost")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    grid = [float(e) for e in args.eps.split(",")]
    settings = AttackSettings(steps=args.steps, queries=args.queries, norm=args.norm)
    x, y = load("digits", split="test")
    x, y = x[:args.limit], y[:args.limit]
    names = args.savings.split(",")
    results = {}
    for name, model in models(args.models.split(",")).items():
        rows = {s: measure(model, x, y, grid, settings, SAVINGS[s]) for s in names}
        for rule in args.square_give_up:
            checkpoints = tuple((int(q), float(r)) for q, r in (pair.split(":") for pair in rule.split(",")))
            rows[f"square {rule}"] = measure(model, x, y, grid, settings, Savings(square_give_up=checkpoints))
        base = rows[names[0]]
        print(f"\n### {name}, first {len(y)} digits test images, {args.norm} eps {grid[0]:g}..{grid[-1]:g}\n")
        print("| savings | " + " | ".join(f"{e:g}" for e in grid) + " | lost / gained | backward / pt | forward / pt | s |")
        print("| --- " * (len(grid) + 5) + "|")
        for s, r in rows.items():
            lost = int((r["correct"] & ~base["correct"]).any(1).sum())
            gained = int((~r["correct"] & base["correct"]).any(1).sum())
            acc = (100 * r["correct"].float().mean(0)).tolist()
            print(f"| {s} | " + " | ".join(f"{a:.1f}" for a in acc) + f" | {lost} / {gained} | "
                  f"{r['backward'] / len(y):.0f} | {r['forward'] / len(y):.0f} | {r['seconds']:.0f} |")
        for s, r in rows.items():
            print(f"- {s} per stage (per point): " + ", ".join(f"{k} {v / len(y):.0f}" for k, v in r["by_stage"].items()))
        if args.breakdown:
            robust = base["correct"].all(1)
            for label, points in (("robust at every eps", robust), ("fooled at some eps", ~robust & base["clean"])):
                idx = points.nonzero()[:, 0]
                if len(idx):
                    part = measure(model, x[idx], y[idx], grid, settings, SAVINGS[names[0]])
                    print(f"- {names[0]}, the {len(idx)} points {label}: backward {part['backward'] / len(idx):.0f} / pt, "
                          f"forward {part['forward'] / len(idx):.0f} / pt; per stage " +
                          ", ".join(f"{k} {v / len(idx):.0f}" for k, v in part["by_stage"].items()))
        results[name] = {s: {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                         for s, r in rows.items()}
    if args.json:
        args.json.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
