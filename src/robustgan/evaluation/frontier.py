"""What robustness costs: worst-case accuracy at one eps against training cost (forward +
backward passes per training image, counted by the training loop), one point per run, and
the Pareto front: the runs no other run beats on both robustness and cost."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from robustgan.errors import RobustganError
from robustgan.eps import format_eps
from robustgan.evaluation.curves import Curve
from robustgan.plotting import pyplot
from robustgan.runtime import training_cost


@dataclass
class FrontierPoint:
    run: str
    method: str
    clean: float
    worst: float  # accuracy under the worst-case attack at the frontier's eps
    protocol: float | None  # the papers' PGD-40 at that eps, beside it
    passes: float  # forward + backward passes per training image, the whole run
    seconds: float  # seconds inside training steps
    on_front: bool = False


def frontier_points(curves: list[Curve], eps: float) -> list[FrontierPoint]:
    """One point per curve (which must include ``eps``), its run's training cost, and which
    points are on the Pareto front. Runs without a recorded cost are refused by name."""
    points = []
    for c in curves:
        cost = training_cost(c.run)
        if cost is None:
            raise RobustganError(f"{c.run}: no training cost recorded (a model trained elsewhere, or a run trained "
                                 "before robustgan counted passes): train it again to place it on the frontier")
        k = next((i for i, e in enumerate(c.eps) if abs(e - eps) < 1e-12), None)
        if k is None:
            raise RobustganError(f"{c.run}: the curve has no eps {format_eps(eps)}")
        points.append(FrontierPoint(c.run, c.method, c.clean, c.acc[k], None if c.protocol is None else c.protocol[k],
                                    cost["passes_per_image"], cost["seconds"]))
    for p in points:  # dominated: another point at most as costly and at least as robust, better in one
        p.on_front = not any(q.passes <= p.passes and q.worst >= p.worst and (q.passes < p.passes or q.worst > p.worst)
                             for q in points)
    return points


def plot_frontier(points: list[FrontierPoint], eps: float, path: Path, title: str = "", note: str = "") -> None:
    """Worst-case accuracy against passes per training image (log x): filled dots, named;
    the front as a step line through its points; clean accuracy as hollow dots above each
    run, the papers' PGD-40 as crosses; ``note`` (the attack, n) under the title."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, p in enumerate(points):
        colour = plt.cm.tab10(i % 10)
        ax.plot([p.passes, p.passes], [p.worst, p.clean], color=colour, lw=0.8, alpha=0.4)
        ax.plot(p.passes, p.clean, "o", mfc="none", color=colour, ms=6)
        ax.plot(p.passes, p.worst, "o", color=colour, ms=7)
        if p.protocol is not None:
            ax.plot(p.passes, p.protocol, "x", color=colour, ms=6, alpha=0.8)
        ax.annotate(Path(p.run).name, (p.passes, p.worst), textcoords="offset points", xytext=(5, -11), fontsize=7,
                    color=colour)
    front = sorted((p for p in points if p.on_front), key=lambda p: p.passes)
    if front:
        xs, ys = [p.passes for p in front], [p.worst for p in front]
        ax.step(xs + [max(q.passes for q in points) * 1.5], ys + [ys[-1]], where="post", color="k", lw=1.2, alpha=0.6)
    for marker, mfc, label in (("o", None, f"worst case at eps {format_eps(eps)}"), ("o", "none", "clean"),
                               ("x", None, "PGD-40 (papers' protocol)")):
        ax.plot([], [], marker, mfc=mfc, color="grey", label=label)
    ax.plot([], [], "-", color="k", alpha=0.6, label="Pareto front (worst case)")
    ax.set_xscale("log")
    ax.set_xlabel("training cost: forward + backward passes per training image (log)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title + ("\n" + "\n".join(textwrap.wrap(note, 95)) if note else ""), fontsize=8)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier_table(points: list[FrontierPoint], title: str, note: str = "") -> Table:
    """The points as a table, cheapest first (runs named by their directory, or by their
    whole path where two share a name)."""
    table = Table(title=title, caption=note)
    for col in ("run", "method", "clean", "worst case (PGD-40)", "passes / image", "train seconds", "front"):
        table.add_column(col, justify="left" if col in ("run", "method") else "right")
    names = [Path(p.run).name for p in points]
    names = dict(zip((p.run for p in points), names if len(set(names)) == len(names) else [str(p.run) for p in points]))
    for p in sorted(points, key=lambda p: p.passes):
        protocol = "" if p.protocol is None else f" ({p.protocol:.1%})"
        table.add_row(names[p.run], p.method, f"{p.clean:.1%}", f"{p.worst:.1%}{protocol}", f"{p.passes:,.0f}",
                      f"{p.seconds:.0f}", "yes" if p.on_front else "")
    return table
