"""What the gradient-free stage's give-up rule (``attacks.gradient_free.GIVE_UP``, per norm) rests on: Square's
margin trajectories on the points the gradient attacks leave robust.

    python benchmarks/square_give_up.py                       # the tiny CNN and its planted twins, ~15 minutes
    python benchmarks/square_give_up.py --models pgd-at-digits  # the digits PGD-AT preset, ~10 minutes
    python benchmarks/square_give_up.py --norm l2               # the same in L2 (Square's L2 version), eps 1..2.5

Models (``ensemble_savings.models``): the tests' tiny PGD-AT CNN; the same behind the planted
thresholding input layer (zero input gradients) and behind the half-thresholding layer (partial
masking: gradients flow through half the image, so the gradient attacks make progress and stall,
and Square is slow to start on some points; tests/planted.py), and those three behind logits
compressed to sign(z)|z|^0.25 (decision-preserving, built to bend margin ratios). For each eps
of ``--eps`` and each point the ensemble's gradient attacks (100 steps) leave robust there, Square
runs ``QUERIES`` (5000) from its own start; at each query of ``CHECKPOINTS`` the script reads the
point's margin as a fraction of its clean margin. Prints, per model and checkpoint, the largest
fraction left on a point Square fooled later (the rule, where it has a checkpoint there, must stay
above it) and the median on points never fooled; then what the rule saves (queries with the rule
against without it, each fooled point counted to the query that fooled it) and the probes it loses
(fooled later by a probe the rule stops).
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

import robustgan  # noqa: E402
from robustgan.attacks import AttackSettings, worst_case  # noqa: E402
from robustgan.attacks.apgd import margin  # noqa: E402
from robustgan.attacks.gradient_free import GIVE_UP  # noqa: E402
from robustgan.attacks.square import QUERIES, SquareSearch  # noqa: E402
from robustgan.attacks.threat import attack_mode  # noqa: E402
from ensemble_savings import models  # noqa: E402

CHECKPOINTS = (100, 300, 500, 750, 1000, 1500, 2000, 3000)
TINY = "tiny,tiny-threshold,tiny-half-threshold,tiny-compressed,tiny-threshold-compressed,tiny-half-threshold-compressed"


def trajectories(model, x, y, grid, norm: str = "linf") -> list[tuple[int | None, list[float]]]:
    """(query Square fooled the point by, or None; its margin fraction at each of CHECKPOINTS, nan
    once the probe has ended) per probe."""
    robust = worst_case(model, x, y, grid, AttackSettings(steps=100, queries=0, norm=norm)).correct
    probes = []
    with attack_mode(model):
        for k, e in enumerate(grid):
            idx = robust[:, k].nonzero()[:, 0]
            if not len(idx):
                continue
            xs, ys, eps = x[idx], y[idx], torch.full((len(idx),), e)
            with torch.no_grad():
                clean = margin(model(xs), ys)
            search = SquareSearch(model, xs, ys, QUERIES, 0, norm=norm)
            search.add(torch.arange(len(idx)), eps, idx, torch.full((len(idx),), QUERIES))
            fooled_by = torch.full((len(idx),), -1)
            fractions = torch.full((len(idx), len(CHECKPOINTS)), float("nan"))
            for query in range(1, QUERIES + 1):
                done = search.step()
                fooled_by[done.points[done.fooled].cpu()] = query
                if query in CHECKPOINTS and search.live is not None:  # the probes still running there
                    live = search.live["points"]
                    fractions[live.cpu(), CHECKPOINTS.index(query)] = (search.live["margin"] / clean[live]).cpu()
                if not search:
                    break
            for j in range(len(idx)):
                by = int(fooled_by[j])
                probes.append((by if by > 0 else None, fractions[j].tolist()))
    return probes


def stopped_at(fractions: list[float], fooled_by: int | None, rule: tuple[tuple[int, float], ...]) -> int | None:
    """The query the rule stops this probe at (None: it runs until fooled or out of budget); every
    query of the rule is one of CHECKPOINTS (``main`` checks)."""
    for query, fraction in rule:
        if (fooled_by is None or fooled_by > query) and fractions[CHECKPOINTS.index(query)] > fraction:
            return query
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=TINY)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--eps", default=None, help="default 0.1,0.15,0.2,0.25,0.3; in L2 1,1.5,2,2.5")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    args = parser.parse_args()
    x, y = robustgan.data.load("digits", split="test")
    x, y = x[:args.limit].float() / 255, y[:args.limit]
    grid = [float(e) for e in (args.eps or ("1,1.5,2,2.5" if args.norm == "l2" else "0.1,0.15,0.2,0.25,0.3")).split(",")]
    rule = dict(GIVE_UP[args.norm])
    if not rule.keys() <= set(CHECKPOINTS):
        parser.error(f"GIVE_UP[{args.norm!r}] checks queries {sorted(rule)}; CHECKPOINTS must hold them all")
    print("| model | probes | fooled | " + " | ".join(f"q {q}" + (f" (rule {rule[q]})" if q in rule else "")
                                                     for q in CHECKPOINTS) + " | queries saved | probes lost |")
    print("| --- " * (3 + len(CHECKPOINTS) + 2) + "|")
    for name, model in models(args.models.split(",")).items():
        probes = trajectories(model, x, y, grid, args.norm)
        cells = []
        for c, query in enumerate(CHECKPOINTS):
            later = [f[c] for by, f in probes if by is not None and by > query]
            never = [f[c] for by, f in probes if by is None]
            cells.append(f"{max(later, default=0):.3f} / {statistics.median(never) if never else 0:.2f}")
        full = sum(by or QUERIES for by, _ in probes)
        stops = [stopped_at(f, by, GIVE_UP[args.norm]) for by, f in probes]
        spent = sum(stop or by or QUERIES for stop, (by, _) in zip(stops, probes))
        lost = sum(stop is not None and by is not None for stop, (by, _) in zip(stops, probes))
        fooled = sum(by is not None for by, _ in probes)
        print(f"| {name} | {len(probes)} | {fooled} | " + " | ".join(cells) +
              f" | {full / max(spent, 1):.1f}x | {lost} |", flush=True)


if __name__ == "__main__":
    main()
