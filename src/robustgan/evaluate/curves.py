"""Robustness curves (paper 000, Sec. 4.5-4.6, Figs. 2-4, Tables 2-4): accuracy against
the test-time eps_i for models trained at eps_t, one colour per eps_t and one line style
per method; the area under each curve as one global-robustness number; point-wise tables."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustgan.eps import format_eps
from robustgan.evaluate.cache import EvalCache, cached_accuracy
from robustgan.plotting import pyplot
from robustgan.runtime import geometry_for, open_run


@dataclass
class Curve:
    run: str
    method: str  # e.g. "atgan", "pgd_at-frac", "standard"
    eps_t: float
    eps: list[float]
    acc: list[float]
    clean: float
    n: int
    settings: dict = field(default_factory=dict)

    @property
    def auc(self) -> float:
        return area(self.eps, self.acc)


def area(eps, acc) -> float:
    """Area under accuracy-vs-eps by the trapezoid rule, divided by the eps range: the mean
    accuracy over [eps_min, eps_max] (a constant curve c has area exactly c)."""
    eps, acc = np.asarray(eps, dtype=float), np.asarray(acc, dtype=float)
    if len(eps) == 1:
        return float(acc[0])
    order = np.argsort(eps)
    eps, acc = eps[order], acc[order]
    return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(eps)) / (eps[-1] - eps[0]))


def method_label(cfg) -> str:
    frac = getattr(cfg.method, "frac", 1.0)
    return cfg.method.name + ("-frac" if frac < 1 else "")


def compute_curve(run_dir, eps_grid, *, attack="pgd", steps=40, step_size=None, restarts=1, limit=0, seed=0,
                  device="cpu", data_root=None, batch_size=256, channels_last=False, progress=None) -> Curve:
    """Clean accuracy and accuracy under ``attack`` at each eps of ``eps_grid`` for one run
    (its first ``limit`` test images), through the run's evaluation cache. ``eval`` prints
    one of these; ``curve`` and ``report`` plot several."""
    cfg, model, x, y = open_run(run_dir, limit=limit, data_root=data_root, device=device)
    cache = EvalCache(run_dir)
    kw = dict(device=device, batch_size=batch_size, num_classes=geometry_for(cfg.data).num_classes, seed=seed,
              channels_last=channels_last)
    task = progress.add_task(f"{Path(run_dir).name}", total=len(y) * (1 + len(eps_grid))) if progress else None
    clean = cached_accuracy(cache, model, x, y, attack="none", progress=progress, task=task, **kw)
    acc = [cached_accuracy(cache, model, x, y, attack=attack, eps=e, steps=steps, step_size=step_size,
                           restarts=restarts, progress=progress, task=task, **kw) for e in eps_grid]
    return Curve(str(run_dir), method_label(cfg), float(getattr(cfg.method, "eps", 0.0)), list(eps_grid), acc, clean,
                 len(y), {"attack": attack, "steps": steps, "restarts": restarts})


def caption(curves: list[Curve]) -> str:
    s = curves[0].settings
    attack = f"PGD-{s['steps']}" + (f", {s['restarts']} restarts" if s["restarts"] > 1 else "") if s["attack"] == "pgd" \
        else s["attack"].upper()
    return f"{attack}, n = {curves[0].n} test images per point"


def plot_curves(curves: list[Curve], path: Path, title: str = "") -> None:
    plt = pyplot()

    eps_ts = sorted({c.eps_t for c in curves})
    methods = list(dict.fromkeys(c.method for c in curves))
    colours = {e: plt.cm.viridis(i / max(1, len(eps_ts) - 1)) for i, e in enumerate(eps_ts)}
    # paper 000 Figs. 2-4: ATGAN solid, baselines dash-dot; further methods get their own styles
    others = iter(["-.", "--", ":", (0, (3, 1, 1, 1, 1, 1)), (0, (5, 2))] * 4)
    styles = {m: "-" if m == "atgan" else next(others) for m in methods}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        ax.plot(c.eps, c.acc, ls=styles[c.method], color=colours[c.eps_t], marker="o", ms=3, lw=1.6,
                label=f"{c.method}, eps_t={format_eps(c.eps_t)} (area {c.auc:.3f})")
    ax.set_xlabel("eps_i (test perturbation, L-inf)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title((title + "\n" if title else "") + caption(curves), fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_csv(curves: list[Curve]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "method", "eps_t", "eps_i", "accuracy", "n", "attack", "steps", "restarts"])
    for c in curves:
        s = c.settings
        writer.writerow([c.run, c.method, c.eps_t, 0.0, c.clean, c.n, "none", 0, 1])
        for e, a in zip(c.eps, c.acc):
            writer.writerow([c.run, c.method, c.eps_t, e, a, c.n, s["attack"], s["steps"], s["restarts"]])
    return out.getvalue()


def pointwise_tables(curves: list[Curve], table_eps: list[float]) -> tuple[str, str]:
    """Paper 000 Tables 2-4: for each eps_i, rows = eps_t, columns = methods. Returns
    (markdown, csv)."""
    methods = list(dict.fromkeys(c.method for c in curves))
    eps_ts = sorted({c.eps_t for c in curves})
    lookup = {(c.method, c.eps_t): c for c in curves}
    md, rows = [], [["eps_i", "eps_t", *methods]]
    for e in table_eps:
        md += [f"**eps_i = {format_eps(e)}** ({caption(curves)})", "",
               "| eps_t | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for t in eps_ts:
            cells = []
            for m in methods:
                c = lookup.get((m, t))
                value = next((a for ce, a in zip(c.eps, c.acc) if abs(ce - e) < 1e-9), None) if c else None
                cells.append("" if value is None else f"{100 * value:.1f}")
            md.append(f"| {format_eps(t)} | " + " | ".join(cells) + " |")
            rows.append([e, t, *cells])
        md.append("")
    md += ["**area under the curve** (mean accuracy over the eps_i range)", "",
           "| eps_t | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t in eps_ts:
        md.append(f"| {format_eps(t)} | " + " | ".join(f"{lookup[(m, t)].auc:.3f}" if (m, t) in lookup else ""
                                                  for m in methods) + " |")
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return "\n".join(md) + "\n", out.getvalue()
