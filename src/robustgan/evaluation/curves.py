"""Robustness curves (paper 000, Sec. 4.5-4.6, Figs. 2-4, Tables 2-4): accuracy against
the test-time eps_i for models trained at eps_t, one colour per eps_t and one line style
per method; the area under each curve as one global-robustness number; point-wise tables."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustgan.attacks import AttackSettings, Batching, WorstCase, attack_label, get_attack, get_norm
from robustgan.attacks.ensemble import refine_min_eps
from robustgan.distributed import sharded
from robustgan.eps import format_eps
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.engine import Subject, run_attack
from robustgan.methods import eps_train, method_class
from robustgan.plotting import pyplot

PROTOCOL_STEPS = 40  # the papers' PGD-40, shown beside the worst case


@dataclass
class Curve:
    run: str
    method: str  # e.g. "atgan", "pgd_at-frac", "standard"
    eps_t: float
    eps: list[float]
    acc: list[float]  # under the chosen attack (by default the worst-case ensemble)
    clean: float
    n: int
    settings: dict = field(default_factory=dict)
    protocol: list[float] | None = None  # the papers' protocol (PGD-40) beside it, when measured
    correct: torch.Tensor | None = field(default=None, repr=False)  # (n, len(eps)) bool, per point
    clean_correct: torch.Tensor | None = field(default=None, repr=False)  # (n,) bool

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
    return method_class(cfg.method.name).label(cfg)


def compute_curve(subject: Subject | str | Path, eps_grid: list[float], settings: AttackSettings = AttackSettings(),
                  ctx: EvalContext = EvalContext(), *, protocol: bool = True) -> Curve:
    """Clean accuracy and accuracy under ``settings``' attack at each eps of ``eps_grid`` for one
    run (a run directory, opened here, or a ``Subject`` opened by the caller), through the run's
    evaluation cache, per point (``engine.run_attack``: EOT instead of the ensemble on a
    randomized model). The papers' protocol (PGD-40) is measured beside it unless ``protocol``
    is False or the attack is PGD. Under torchrun the test points are sharded across ranks.
    ``eval`` prints one of these; ``curve`` and ``report`` plot several."""
    get_attack(settings.name)  # an unknown attack, "none" included: one AttackError naming every choice
    settings.check()
    subject = subject if isinstance(subject, Subject) else Subject.open(subject, ctx)
    protocol = protocol and settings.name != "pgd"
    columns = len(eps_grid) * (2 if protocol else 1)
    advance = ctx.advance(subject.path.name if subject.path else "evaluate", len(subject.y) * columns)
    start = time.perf_counter()
    found = run_attack(subject, eps_grid, settings, ctx, advance)
    paper = run_attack(subject, eps_grid, AttackSettings("pgd", steps=PROTOCOL_STEPS, seed=settings.seed,
                                                         norm=settings.norm), ctx, advance).correct if protocol else None
    s, n = found.settings.resolved(), len(subject.y)
    spec = s.spec
    summary = {"attack": s.name, "attacks": found.attacks, "steps": s.steps if spec.steps is not None else None,
               "restarts": s.restarts, "targets": s.targets if s.name == "ensemble" else None,
               "queries": s.queries if "queries" in spec.key else None,
               "protocol": f"pgd-{PROTOCOL_STEPS}" if protocol else None, "seed": s.seed, "norm": s.norm,
               "seconds": time.perf_counter() - start, "cost": found.cost, "decisions_only": found.decisions_only}
    cfg = subject.config
    return Curve(str(subject.path), method_label(cfg) if cfg else "model", eps_train(cfg) if cfg else 0.0,
                 list(eps_grid), fractions(found.correct) if n else [0.0] * len(eps_grid),
                 fractions(found.clean) if n else 0.0, n, summary,
                 fractions(paper) if paper is not None and n else None, found.correct, found.clean)


def fractions(correct: torch.Tensor):
    """Accuracy as the fraction k / n in float64 (per column of an (n, k) mask): 0.6, not 0.6000000238."""
    return (correct.sum(0).double() / len(correct)).tolist()


def min_norm_distances(subject: Subject, curve: Curve, ctx: EvalContext = EvalContext(), *, rounds=4) -> torch.Tensor:
    """Each point's smallest fooling eps from an ensemble curve: the smallest grid eps that
    fooled it, narrowed by ``rounds`` bisections (``attacks.ensemble.refine_min_eps``) with the
    curve's steps, targets and seed."""
    x, y = subject.x, subject.y
    order = sorted(range(len(curve.eps)), key=curve.eps.__getitem__)
    s = curve.settings
    found = WorstCase([curve.eps[i] for i in order], curve.correct[:, order], curve.clean_correct, s["attacks"], 0, 0.0)
    settings = AttackSettings("ensemble", steps=s["steps"], targets=s["targets"], seed=s["seed"],
                              norm=s.get("norm", "linf"))
    batching = Batching(ctx.device, ctx.batch_size, ctx.advance("min-norm", len(y)))
    return sharded(lambda ids: refine_min_eps(
        subject.model, x[ids], y[ids], WorstCase(found.eps, found.correct[ids], found.clean[ids], found.attacks, 0, 0.0),
        settings, batching, rounds=rounds, ids=ids), len(y)) if len(y) else found.min_eps()


def caption(curves: list[Curve]) -> str:
    s = curves[0].settings
    beside = f"; x: {s['protocol'].upper()} (papers' protocol)" if curves[0].protocol else ""
    return f"{attack_label(s)}{beside}, n = {curves[0].n} test images per point"


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
        if c.protocol is not None:  # the papers' protocol beside the worst case, never instead of it
            ax.plot(c.eps, c.protocol, ls="none", color=colours[c.eps_t], marker="x", ms=5, alpha=0.8)
    ax.set_xlabel(f"eps_i (test perturbation, {get_norm(curves[0].settings.get('norm', 'linf')).title})")
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
    writer.writerow(["run", "method", "eps_t", "eps_i", "accuracy", "n", "attack", "steps", "restarts", "targets",
                     "protocol", "protocol_accuracy", "norm"])
    for c in curves:
        s = c.settings
        writer.writerow([c.run, c.method, c.eps_t, 0.0, c.clean, c.n, "none", 0, 1, "", "", "", s.get("norm", "linf")])
        for i, (e, a) in enumerate(zip(c.eps, c.acc)):
            writer.writerow([c.run, c.method, c.eps_t, e, a, c.n, s["attack"], s["steps"], s["restarts"],
                             s.get("targets") or "", s.get("protocol") or "",
                             "" if c.protocol is None else c.protocol[i], s.get("norm", "linf")])
    return out.getvalue()


def pointwise_tables(curves: list[Curve], table_eps: list[float]) -> tuple[str, str]:
    """Paper 000 Tables 2-4: for each eps_i, rows = eps_t, columns = methods. Returns
    (markdown, csv)."""
    methods = list(dict.fromkeys(c.method for c in curves))
    eps_ts = sorted({c.eps_t for c in curves})
    lookup = {(c.method, c.eps_t): c for c in curves}
    md, rows = [], [["eps_i", "eps_t", *methods]]
    for e in table_eps:
        beside = f"; in parentheses {curves[0].settings['protocol'].upper()}, the papers' protocol" \
            if curves[0].protocol else ""
        md += [f"**eps_i = {format_eps(e)}** ({attack_label(curves[0].settings)}{beside}; n = {curves[0].n})", "",
               "| eps_t | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for t in eps_ts:
            cells = []
            for m in methods:
                c = lookup.get((m, t))
                k = next((i for i, ce in enumerate(c.eps) if abs(ce - e) < 1e-9), None) if c else None
                paper = f" ({100 * c.protocol[k]:.1f})" if k is not None and c.protocol is not None else ""
                cells.append("" if k is None else f"{100 * c.acc[k]:.1f}{paper}")
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
