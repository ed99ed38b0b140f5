"""Outputs that carry only the decision: the default ensemble on one classifier behind
softmax(1000 z) (probabilities that underflow to 0 on almost every point), with and without its
decision stage (RayS), against the same ensemble on the classifier's logits and RayS alone.

    python benchmarks/decisions_only.py                     # 100 test images, eps 0.1,0.2,0.3, 20 steps, 500 queries
    python benchmarks/decisions_only.py --limit 200 --steps 100 --queries 5000

The classifier is the tests' tiny CNN after PGD-AT on digits (benchmarks/gradient_free.py's).
Prints a markdown table: accuracy per eps, forward passes without a gradient per point, seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustgan.attacks import AttackSettings, worst_case  # noqa: E402
from robustgan.attacks.outputs import decisions_only_fraction  # noqa: E402
from robustgan.attacks.rays import ray_search  # noqa: E402
from robustgan.attacks.threat import attack_mode  # noqa: E402
from gradient_free import pgd_at_tiny_cnn  # noqa: E402


class Saturated(torch.nn.Module):
    """softmax(1000 z): the classifier's decisions, its margins lost to underflow."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(1000 * self.model(x), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--eps", default="0.1,0.2,0.3")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    eps = [float(e) for e in args.eps.split(",")]
    model, x, y = pgd_at_tiny_cnn(args.limit)
    hard = Saturated(model).eval()
    print(f"decisions only: {decisions_only_fraction(hard, x):.0%} of {len(y)} points behind softmax(1000 z)\n")
    rows = []

    def ensemble(name, net, queries):
        start = time.perf_counter()
        found = worst_case(net, x, y, eps, AttackSettings(steps=args.steps, queries=queries))
        rows.append((name, found.accuracy, found.forwards / len(y), time.perf_counter() - start))

    ensemble("ensemble on the logits", model, args.queries)
    ensemble("ensemble on softmax(1000 z), gradients only (queries 0)", hard, 0)
    ensemble("ensemble on softmax(1000 z) (with RayS)", hard, args.queries)
    start = time.perf_counter()
    with attack_mode(hard):
        best, _, forwards = ray_search(hard, x, y, queries=args.queries, stop_at=min(eps))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    rows.append((f"RayS alone ({args.queries} queries)", [(clean & (best > e)).float().mean().item() for e in eps],
                 forwards / len(y), time.perf_counter() - start))
    print("| attack | " + " | ".join(f"eps {e:g}" for e in eps) + " | forwards per point | seconds |")
    print("| --- | " + " | ".join("---" for _ in eps) + " | --- | --- |")
    for name, acc, forwards, seconds in rows:
        print(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in acc) + f" | {forwards:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
