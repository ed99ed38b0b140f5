"""The ensemble's gradient-free stage on a model whose gradients vanish (a thresholding input
layer, tests/planted.py) and on the same model without it, against Square alone at every eps
(AutoAttack's last attack, 5000 queries) and, optionally, standard AutoAttack.

    python benchmarks/gradient_free.py                         # 100 test images, the 9-eps grid, 100 steps
    python benchmarks/gradient_free.py --eps 0.1,0.2,0.3 --steps 10   # the test's settings: 500 queries
    python benchmarks/gradient_free.py --limit 200 --autoattack

The model is the tests' tiny CNN after 8 epochs of PGD-5 training at eps 0.2 on digits (about
3 s). Counts: gradient evaluations (a forward and an input-gradient pass over one point) and
forward passes without a gradient (Square's queries), per test point, summed over the grid;
seconds of one process. Prints a markdown table per model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robustgan.attacks import AttackSettings, robust_mask, worst_case  # noqa: E402
from robustgan.attacks.registry import QUERIES_PER_STEP  # noqa: E402
from robustgan.attacks.threat import attack_mode  # noqa: E402
from robustgan.data import load  # noqa: E402
from tests.helpers import tiny_cnn, train_pgd_at  # noqa: E402
from tests.planted import ThresholdInputs  # noqa: E402

GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]


class Counted(torch.nn.Module):
    """The model, counting the points of every forward pass, and of those whose input needs a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.forwards, self.backwards = model, 0, 0

    def forward(self, x):
        self.forwards += len(x)
        self.backwards += len(x) if x.requires_grad else 0
        return self.model(x)


def measure(name, model, run) -> dict:
    counted = Counted(model).eval()
    start = time.perf_counter()
    with attack_mode(counted):
        correct = run(counted)
    return {"name": name, "acc": correct.float().mean(0).tolist(), "seconds": time.perf_counter() - start,
            "grad": counted.backwards, "forward_only": counted.forwards - counted.backwards}


def pgd_at_tiny_cnn(limit: int):
    """The tests' tiny CNN after PGD-AT on digits (seed 0, 2 threads, about 3 s), in eval mode,
    and the first ``limit`` digits test images in [0, 1] with their labels."""
    torch.set_num_threads(2)
    x, y = load("digits", split="train")
    xt, yt = load("digits", split="test")
    torch.manual_seed(0)
    net = tiny_cnn()
    train_pgd_at(net, x.float() / 255, y)
    return net.eval(), xt[:limit].float() / 255, yt[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--eps", default=",".join(map(str, GRID)), help="comma-separated eps grid")
    parser.add_argument("--steps", type=int, default=100, help="the ensemble's steps; queries: 50 x steps")
    parser.add_argument("--autoattack", action="store_true", help="also standard AutoAttack (needs torchattacks)")
    args = parser.parse_args()
    net, x, y = pgd_at_tiny_cnn(args.limit)
    grid, steps = [float(e) for e in args.eps.split(",")], args.steps
    queries = QUERIES_PER_STEP * steps
    for label, model in (("PGD-AT tiny CNN", net), ("the same behind a thresholding input layer",
                                                    ThresholdInputs(net).eval())):
        rows = [measure("ensemble, gradient attacks only (--queries 0)", model,
                        lambda m: worst_case(m, x, y, grid, AttackSettings(steps=steps, queries=0)).correct),
                measure(f"ensemble (default: + Square stage, {queries} queries)", model,
                        lambda m: worst_case(m, x, y, grid, AttackSettings(steps=steps)).correct),
                measure(f"Square alone at every eps ({queries} queries)", model, lambda m: torch.stack(
                    [robust_mask(m, x, y, e, AttackSettings("square", steps=queries, seed=0)) for e in grid], 1))]
        if args.autoattack:
            rows.append(measure("standard AutoAttack (torchattacks)", model, lambda m: torch.stack(
                [robust_mask(m, x, y, e, AttackSettings("autoattack")) for e in grid], 1)))
        print(f"\n{label}, first {len(y)} digits test images\n")
        print("| attack | " + " | ".join(f"{e:g}" for e in grid) + " | grad evals / point | forwards / point | seconds |")
        print("| --- " * (len(grid) + 4) + "|")
        for r in rows:
            print(f"| {r['name']} | " + " | ".join(f"{100 * a:.0f}" for a in r["acc"])
                  + f" | {r['grad'] / len(y):.0f} | {r['forward_only'] / len(y):.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
