"""What the gradient-free stage's give-up rule (``attacks.gradient_free.GIVE_UP``) rests on: Square's
margin trajectories on the points the gradient attacks leave robust.

    python benchmarks/square_give_up.py              # first 200 digits test images, about 4 minutes

Models: the tests' tiny PGD-AT CNN, the same behind the planted thresholding input layer
(tests/planted.py), and both behind logits compressed to sign(z)|z|^0.25 (decision-preserving,
built to bend margin ratios). For each eps of 0.1-0.3 and each point the ensemble's gradient
attacks (100 steps) leave robust, Square runs 5000 queries from its own start; at each
checkpoint of ``GIVE_UP`` the script reads the point's margin as a fraction of its clean margin.
Prints, per model and checkpoint: the largest fraction left on a point Square fooled later
(the rule must stay above it), the median on points never fooled, and what the rule saves
(queries with the rule against queries without it, each fooled point counted to the query that
fooled it).
Fresh probes only: the stage's warm starts begin nearer the boundary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustgan.attacks import AttackSettings, worst_case  # noqa: E402
from robustgan.attacks.apgd import margin  # noqa: E402
from robustgan.attacks.gradient_free import GIVE_UP  # noqa: E402
from robustgan.attacks.square import QUERIES, SquareSearch  # noqa: E402
from robustgan.attacks.threat import attack_mode  # noqa: E402
from gradient_free import pgd_at_tiny_cnn  # noqa: E402
from tests.planted import ThresholdInputs  # noqa: E402


class Compressed(torch.nn.Module):
    """sign(z) |z|^0.25 of the model's logits: the same decision, margins bent."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x)
        return z.sign() * z.abs() ** 0.25


def trajectories(model, x, y, grid) -> list[tuple[int | None, list[float]]]:
    """(query Square fooled the point by, or None; its margin fraction at each GIVE_UP checkpoint) per probe."""
    robust = worst_case(model, x, y, grid, AttackSettings(steps=100, queries=0)).correct
    checkpoints = [q for q, _ in GIVE_UP]
    probes = []
    with attack_mode(model):
        for k, e in enumerate(grid):
            idx = robust[:, k].nonzero()[:, 0]
            if not len(idx):
                continue
            xs, ys, eps = x[idx], y[idx], torch.full((len(idx),), e)
            with torch.no_grad():
                clean = margin(model(xs), ys)
            search = SquareSearch(model, xs, ys, QUERIES, 0)
            search.add(torch.arange(len(idx)), eps, idx, torch.full((len(idx),), QUERIES))
            fooled_by, fractions = torch.full((len(idx),), -1), torch.zeros(len(idx), len(checkpoints))
            for query in range(1, QUERIES + 1):
                done = search.step()
                fooled_by[done.points[done.fooled]] = query
                if query in checkpoints and search.live is not None:  # the probes still running there
                    live = search.live["points"]
                    fractions[live, checkpoints.index(query)] = search.live["margin"] / clean[live]
                if not search:
                    break
            for j in range(len(idx)):
                by = int(fooled_by[j])
                probes.append((by if by > 0 else None, fractions[j].tolist()))
    return probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    net, x, y = pgd_at_tiny_cnn(args.limit)
    models = {"PGD-AT tiny CNN": net, "behind the thresholding layer": ThresholdInputs(net).eval()}
    models |= {f"{name}, compressed logits": Compressed(m).eval() for name, m in list(models.items())}
    print("| model | probes | fooled | " + " | ".join(f"query {q}: rule / most left on a later-fooled point / "
                                                     "median never fooled" for q, _ in GIVE_UP) + " | queries saved |")
    print("| --- " * (3 + len(GIVE_UP) + 1) + "|")
    for name, model in models.items():
        probes = trajectories(model, x, y, [0.1, 0.15, 0.2, 0.25, 0.3])
        cells, full, spent = [], 0, 0
        for c, (query, rule) in enumerate(GIVE_UP):
            later = [f[c] for by, f in probes if by is not None and by > query]
            never = [f[c] for by, f in probes if by is None]
            cells.append(f"{rule} / {max(later, default=0):.3f} / {statistics.median(never) if never else 0:.2f}")
        for by, f in probes:
            full += by or QUERIES
            stop = next((q for c, (q, rule) in enumerate(GIVE_UP) if (by is None or by > q) and f[c] > rule), None)
            spent += stop or by or QUERIES
        fooled = sum(by is not None for by, _ in probes)
        print(f"| {name} | {len(probes)} | {fooled} | " + " | ".join(cells) + f" | {full / max(spent, 1):.1f}x |")


if __name__ == "__main__":
    main()
