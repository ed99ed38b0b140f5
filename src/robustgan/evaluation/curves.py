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

from robustgan.attacks import WorstCase, attack_label, get_attack, worst_case
from robustgan.attacks.threat import randomized
from robustgan.attacks.ensemble import DEFAULT_TARGETS, ensemble_names, refine_min_eps, usable_targets
from robustgan.attacks.outputs import decisions_only_fraction
from robustgan.distributed import sharded
from robustgan.eps import format_eps
from robustgan.methods import eps_train, method_class
from robustgan.evaluation.cache import EvalCache, cached_mask, mask_settings
from robustgan.evaluation.context import EvalContext
from robustgan.plotting import pyplot
from robustgan.runtime import geometry_for, open_run

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


def ensemble_masks(cache: EvalCache, model, x, y, grid, clean, *, steps, targets, restarts, seed, queries=None,
                   spent: dict | None = None, **kw):
    """(n, len(grid)) per-point results of the worst-case ensemble through the cache. Only
    eps values not cached are attacked (in one ascending, warm-started pass; points fooled
    at a smaller cached eps are skipped), and every result is closed upwards over all cached
    eps: a point fooled at eps' is fooled at every eps >= eps'.

    Resumable: the points are attacked one batch at a time and each batch's results are
    saved (``cache.partial()``) before the next starts, so a curve killed mid-way redoes only
    the batch it was in. The random starts are drawn per test point, so the batches give
    what one pass over all points gives. ``spent`` (a dict) gets this process's gradient
    evaluations and gradient-free forward passes added (nothing for cached results)."""
    base = mask_settings("ensemble", 1.0, len(y), seed, steps, None, restarts, targets, queries)
    del base["eps"]
    known = cache.matching(**base)
    missing = sorted({e for e in grid if e > 0 and e not in known})
    if missing:
        fooled_below = [torch.stack([~m for e2, m in known.items() if e2 < e] or [torch.zeros(len(y), dtype=torch.bool)])
                        .any(0) for e in missing]
        known_fooled = torch.stack(fooled_below, 1)
        partial, parts, batch_keys = cache.partial(), [], []
        for lo in range(0, len(y), kw["batch_size"]):
            points = torch.arange(lo, min(lo + kw["batch_size"], len(y)))
            keys = [base | {"eps": e, "n": len(points), "points": f"{lo}:{lo + len(points)}"} for e in missing]
            batch_keys += keys
            done = [partial.get(**key) for key in keys]
            if any(mask is None for mask in done):
                def attack(ids):
                    found = worst_case(model, x[points[ids]], y[points[ids]], missing, steps=steps, targets=targets,
                                       restarts=restarts, seed=seed, ids=points[ids], queries=base["queries"],
                                       known_fooled=known_fooled[points[ids]], **kw)
                    if spent is not None:
                        spent["grad_evals"] += found.grad_evals
                        spent["forwards"] += found.forwards
                    return found.correct

                part = sharded(attack, len(points))
                partial.put_many([(part[:, k], key) for k, key in enumerate(keys)])
            else:
                part = torch.stack(done, 1)
                if kw.get("advance") is not None:
                    kw["advance"](len(points) * len(missing))
            parts.append(part)
        found = torch.cat(parts)
        cache.put_many([(found[:, k], base | {"eps": e}) for k, e in enumerate(missing)])
        partial.discard(batch_keys)  # the whole curve is cached now: its batches are not needed
        known |= {e: found[:, k] for k, e in enumerate(missing)}
    elif kw.get("advance") is not None:
        kw["advance"](len(y) * len(grid))
    closed, running = {0.0: clean}, clean.clone()
    for e in sorted(known):
        running &= known[e]
        closed[e] = running.clone()
    return torch.stack([closed[e] for e in grid], 1)


def compute_curve(run_dir, eps_grid, ctx: EvalContext = EvalContext(), *, attack="ensemble", steps=None, step_size=None,
                  restarts=1, targets=DEFAULT_TARGETS, queries=None, protocol=True, channels_last=False) -> Curve:
    """Clean accuracy and accuracy under ``attack`` at each eps of ``eps_grid`` for one run
    (its first ``ctx.limit`` test images), through the run's evaluation cache, per point. By
    default the attack is the worst-case ensemble and the papers' protocol (PGD-40) is
    measured beside it (``protocol=False`` skips it). On a randomized model (two passes over the
    first test images differ) the default is ``eot`` instead: the ensemble's gradients and
    queries are scored on single draws, which test-time randomness misleads. Under torchrun the
    test points are sharded across ranks. ``eval`` prints one of these; ``curve`` and ``report``
    plot several."""
    cfg, model, x, y = open_run(run_dir, limit=ctx.limit, data_root=ctx.data_root, device=ctx.device)
    if attack == "ensemble" and randomized(model, x[:64].to(ctx.device)):
        attack = "eot"
    spec = get_attack(attack)
    steps, queries = spec.budget(steps, queries)  # Square's and RayS's steps are their queries
    protocol = protocol and attack != "pgd"
    cache = EvalCache(run_dir)
    columns = 1 + len(eps_grid) * (2 if protocol else 1)
    kw = dict(device=ctx.device, batch_size=ctx.batch_size, advance=ctx.advance(Path(run_dir).name, len(y) * columns))
    mask_kw = kw | dict(num_classes=geometry_for(cfg.data).num_classes, channels_last=channels_last, seed=ctx.seed)

    def per_eps(**settings):  # one sharded, cached mask per eps
        return torch.stack([cached_mask(cache, model, x, y, eps=e, **settings, **mask_kw) for e in eps_grid], 1)

    start = time.perf_counter()
    spent = {"grad_evals": 0, "forwards": 0}
    clean = cached_mask(cache, model, x, y, attack="none", **mask_kw)
    if attack == "ensemble":
        correct = ensemble_masks(cache, model, x, y, eps_grid, clean, steps=steps, targets=targets, spent=spent,
                                 restarts=restarts, seed=ctx.seed, queries=queries, **kw)
    else:
        correct = per_eps(attack=attack, steps=steps, step_size=step_size, restarts=restarts, queries=queries)
    paper = per_eps(attack="pgd", steps=PROTOCOL_STEPS) if protocol else None
    key = mask_settings(attack, 1.0, 0, 0, steps, queries=queries)
    label_only = decisions_only_fraction(model, x, ctx.batch_size, ctx.device)
    classes = geometry_for(cfg.data).num_classes
    settings = {"attack": attack, "attacks": ensemble_names(usable_targets(targets, classes), key["queries"],
                                                            label_only > 0) if attack == "ensemble" else [attack],
                "steps": steps if spec.steps is not None else None, "restarts": restarts,
                "targets": targets if attack == "ensemble" else None,
                "queries": key.get("queries"),
                "protocol": f"pgd-{PROTOCOL_STEPS}" if protocol else None, "seed": ctx.seed,
                "seconds": time.perf_counter() - start, "cost": spent if attack == "ensemble" else None,
                "decisions_only": label_only}
    return Curve(str(run_dir), method_label(cfg), eps_train(cfg), list(eps_grid),
                 fractions(correct) if len(y) else [0.0] * len(eps_grid), fractions(clean) if len(y) else 0.0,
                 len(y), settings, fractions(paper) if paper is not None and len(y) else None, correct, clean)


def fractions(correct: torch.Tensor):
    """Accuracy as the fraction k / n in float64 (per column of an (n, k) mask): 0.6, not 0.6000000238."""
    return (correct.sum(0).double() / len(correct)).tolist()


def min_norm_distances(run_dir, curve: Curve, ctx: EvalContext = EvalContext(), *, rounds=4) -> torch.Tensor:
    """Each point's smallest fooling eps from an ensemble curve: the smallest grid eps that
    fooled it, narrowed by ``rounds`` bisections (``attacks.ensemble.refine_min_eps``)."""
    _, model, x, y = open_run(run_dir, limit=ctx.limit, data_root=ctx.data_root, device=ctx.device)
    order = sorted(range(len(curve.eps)), key=curve.eps.__getitem__)
    s = curve.settings
    found = WorstCase([curve.eps[i] for i in order], curve.correct[:, order], curve.clean_correct, s["attacks"], 0, 0.0)
    advance = ctx.advance("min-norm", len(y))
    upper = found.min_eps()
    return sharded(lambda ids: refine_min_eps(
        model, x[ids], y[ids], WorstCase(found.eps, found.correct[ids], found.clean[ids], found.attacks, 0, 0.0),
        rounds=rounds, steps=s["steps"], targets=s["targets"], seed=s["seed"], batch_size=ctx.batch_size,
        device=ctx.device, ids=ids,
        advance=advance), len(y)) if len(y) else upper


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
    writer.writerow(["run", "method", "eps_t", "eps_i", "accuracy", "n", "attack", "steps", "restarts", "targets",
                     "protocol", "protocol_accuracy"])
    for c in curves:
        s = c.settings
        writer.writerow([c.run, c.method, c.eps_t, 0.0, c.clean, c.n, "none", 0, 1, "", "", ""])
        for i, (e, a) in enumerate(zip(c.eps, c.acc)):
            writer.writerow([c.run, c.method, c.eps_t, e, a, c.n, s["attack"], s["steps"], s["restarts"],
                             s.get("targets") or "", s.get("protocol") or "",
                             "" if c.protocol is None else c.protocol[i]])
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
