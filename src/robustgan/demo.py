"""`robustgan demo`: the main job. On the embedded digits it trains standard training,
PGD-AT, ATGAN, GAN-AT (`grad` formulation) and the baselines FGSM-RS and TRADES, evaluates
robustness curves (the worst-case ensemble, the papers' PGD-40 beside it) and the
gradient-masking checks, writes <out>/report.html, prints a summary table and the
frontier (robustness at eps 0.2 against training cost, <out>/frontier.png)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from robustgan.config import load_config
from robustgan.evaluation.context import EvalContext, evaluation
from robustgan.evaluation.checks import CheckSettings, check_run, overall_status, summary_line
from robustgan.attacks import DEFAULT_TARGETS, AttackSettings, attack_label
from robustgan.evaluation.curves import area, caption, compute_curve
from robustgan.evaluation.frontier import frontier_points, plot_frontier
from robustgan.evaluation.frontier import frontier_table as table_of_points
from robustgan.report.html import build_report
from robustgan.runtime import resolve_device, training_cost
from robustgan.train import fit

console = Console()
EPS_GRID = [0.1, 0.2, 0.3]  # one curve: the ensemble settles each point at its largest robust eps
SUMMARY_EPS = (0.1, 0.2, 0.3)
COMMON = ['data.name="digits"', 'model.name="cw_cnn"', "train.batch_size=64", "train.eval_eps=0.2",
          "train.eval_every=100", "train.eval_limit=100", "train.channels_last=true"]  # 1.16-1.19x on a CPU
ATTACK = ["method.eps=0.2", "method.steps=5", "method.step_size=0.06", "method.ramp_epochs=2"]
FGSM_STEP = "method.step=0.75"  # at 1.25 eps (Wong et al.) FGSM-RS overfits catastrophically on digits
# name -> overrides of the digits presets (written out so the installed package needs no files)
RUNS = {
    "standard": ['method.name="standard"', "train.epochs=4"],
    "pgd_at": ['method.name="pgd_at"', *ATTACK, "train.epochs=5"],
    "atgan": ['method.name="atgan"', *ATTACK, "train.epochs=4", "method.loss_net_epochs=2",
              'method.generator="atgan_g_mnist"'],
    "gan_at": ['method.name="gan_at"', 'method.inputs="grad"', "method.eps=0.2", "train.epochs=2",
               "data.shift=3", "optim.betas=[0.5, 0.9]"],
    "fgsm_rs": ['method.name="fgsm_rs"', "method.eps=0.2", FGSM_STEP, 'schedule.name="cyclic"', "optim.lr=2e-3",
                "train.epochs=6"],
    "trades": ['method.name="trades"', *ATTACK, "method.beta=1.0", "train.epochs=4"],
}
FRONTIER_EPS = 0.2
QUICK = ["train.epochs=1", "data.train_limit=64", "train.eval_limit=16", "method.loss_net_epochs=1"]


def demo_config(name: str, quick: bool):
    overrides = [*COMMON, *RUNS[name], *(QUICK if quick else [])]
    if name != "atgan":
        overrides = [o for o in overrides if not o.startswith("method.loss_net_epochs")]
    return load_config(None, overrides)


def short_status(summary: str) -> str:
    """'11 passed, 1 skipped (autoattack: ...)' -> '11 pass, 1 skipped' for the table (warned
    checks keep their names; the full line is printed above it and kept in summary.json)."""
    parts = [p if "warned" in p else p.split(" (")[0] for p in summary.removeprefix("WARN: ").split(", ")
             if p[:1].isdigit()]
    return ("WARN " if summary.startswith("WARN") else "") + ", ".join(parts).replace(" passed", " pass")


def frontier_table(curves: dict, out: Path) -> Table:
    """Robustness at FRONTIER_EPS against training cost, one row per run (cheapest first);
    the plot goes to <out>/frontier.png."""
    points = frontier_points(list(curves.values()), FRONTIER_EPS)
    note = caption(list(curves.values()))
    plot_frontier(points, FRONTIER_EPS, out / "frontier.png", "digits: robustness against training cost", note)
    return table_of_points(points, f"what robustness costs (eps {FRONTIER_EPS}): forward + backward passes per "
                                   f"training image over the whole run; {out / 'frontier.png'}", note)


def run_demo(out: Path, quick: bool = False) -> dict:
    out, start = Path(out), time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    device = resolve_device("auto")
    limit, steps = (16, 3) if quick else (40, 40)  # checks: PGD-40 (PGD-20 under-attacked ATGAN by up to 8 points)
    targets = 1 if quick else DEFAULT_TARGETS  # quick: a smoke test of every stage, not a measurement
    queries = 30 if quick else None  # the gradient-free stage: quick runs it briefly
    runs = {}
    for i, name in enumerate(RUNS, 1):
        console.rule(f"[bold]{i}/{len(RUNS)}: training {name}")
        runs[name] = fit(demo_config(name, quick), out / name).path
    console.rule("[bold]robustness curves")
    with evaluation(device, limit=limit, console=console) as ctx:
        # the worst-case ensemble (in the quick demo: 3 steps per attack), the papers' PGD-40 beside it
        ensemble = AttackSettings(steps=steps if quick else None, targets=targets, queries=queries)
        curves = {n: compute_curve(r, EPS_GRID, ensemble, ctx) for n, r in runs.items()}
    console.rule("[bold]gradient-masking checks")
    checks = {}
    for name, run in runs.items():
        # the same images and attacks as the curves at eps 0.2 (read from the run's cache)
        surrogate = runs["pgd_at"] if name == "standard" else runs["standard"]
        settings = CheckSettings(eps=0.2, steps=steps, long_steps=10 if quick else 60, restarts=2, autoattack=False,
                                 ensemble_steps=steps if quick else 100, targets=targets, queries=queries, seed=0)
        results = check_run(run, settings, EvalContext(device, limit=limit), surrogate=str(surrogate))
        checks[name] = ("WARN: " if overall_status(results) == "warn" else "") + summary_line(results)
        console.print(f"{name:>9}: {checks[name]}")
    short = {name: short_status(text) for name, text in checks.items()}
    console.rule("[bold]report")
    with evaluation(device, limit=limit, console=console) as ctx:
        report = build_report(list(runs.values()), out / "report.html", ensemble, ctx, eps_grid=EPS_GRID, steps=steps,
                              index=3)
    first = next(iter(curves.values()))
    table = Table(title=f"digits test set (first {limit} images): {attack_label(first.settings)}; "
                        f"in parentheses {first.settings['protocol'].upper()}, the papers' protocol")
    for col in ("method", "clean", *[f"eps {e}" for e in SUMMARY_EPS], "curve area", "checks"):
        table.add_column(col, justify="left" if col in ("method", "checks") else "right")
    summary = {}
    for name, c in curves.items():
        acc, paper = dict(zip(c.eps, c.acc)), dict(zip(c.eps, c.protocol))
        summary[name] = {"clean": c.clean, **{str(e): acc[e] for e in SUMMARY_EPS}, "area": c.auc,
                         "attack": c.settings["attack"], "attacks": c.settings["attacks"],
                         "protocol": {str(e): paper[e] for e in SUMMARY_EPS}, "checks": checks[name],
                         "training_cost": training_cost(runs[name])}
        table.add_row(name, f"{c.clean:.1%}", *(f"{acc[e]:.1%} ({paper[e]:.1%})" for e in SUMMARY_EPS),
                      f"{c.auc:.3f} ({area(c.eps, c.protocol):.3f})", short[name])
    console.print(table)
    console.print(frontier_table(curves, out))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    console.print(f"finished in {time.perf_counter() - start:.0f} s; report: [bold]{report}[/bold]")
    return summary
