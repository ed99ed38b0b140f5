"""Report commands: report, card, frontier."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from robustgan.attacks import ATTACKS, AttackSettings
from robustgan.cli.common import (DATA_ROOT, DATASET, DEVICE, LIMIT, MODEL, NORM, QUERIES, RESULTS, SEED, STEPS, TARGETS,
                                  WEIGHTS, eps_grid, resolve_norm,
                                  check_attack, check_common, check_ensemble_steps, err_console, json_eps, out_console, positive,
                                  require, single_subject, writable)
from robustgan.eps import format_eps
from robustgan.evaluation.card import build_card, write_card
from robustgan.evaluation.context import EvalContext, evaluation
from robustgan.evaluation.checks import CheckSettings, check_file, check_run
from robustgan.evaluation.curves import caption, compute_curve
from robustgan.evaluation.frontier import frontier_points, frontier_table, plot_frontier
from robustgan.report.html import build_report
from robustgan.methods import norm_train
from robustgan.runs import RunDir
from robustgan.runtime import resolve_device


def report(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run directories"),
    out: Path = typer.Option(Path("runs/report.html"), "--out", metavar="PATH", help="HTML file to write"),
    eps: str = typer.Option("", metavar="EPS", help="eps_i grid for the curves (default: the paper's grid)"),
    norm: Optional[str] = NORM,
    steps: int = typer.Option(20, metavar="N", help="PGD steps of the saliency images (curves: --ensemble-steps)"),
    ensemble_steps: int = typer.Option(ATTACKS["ensemble"].steps, "--ensemble-steps", metavar="N",
                                       help="APGD steps per attack of the curves' worst-case ensemble, PGD-40 "
                                            "beside it (--check keeps eval's 100)"),
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    limit: int = LIMIT,
    index: int = typer.Option(0, "--index", metavar="INDEX", help="Test image for saliency and trends"),
    run_checks: bool = typer.Option(False, "--check/--no-check", help="Run the checks first where missing"),
    seed: int = SEED,
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
):
    """One self-contained HTML page for a set of runs (images embedded).

    Examples:

      robustgan report runs/demo/* --out runs/demo/report.html

      robustgan report runs/sweep-mnist/* --check
    """
    positive("--steps", steps)
    check_common(limit=limit, queries=queries)
    writable(out)
    require(0 <= targets <= 9, f"--targets must be in 0..9, got {targets}")
    check_ensemble_steps(ensemble_steps, err_console, "the curves may overstate robustness")
    norm = resolve_norm(norm, runs)
    grid = eps_grid(eps, RunDir(runs[0]).config().data.name, norm=norm)
    device = resolve_device(device)
    if run_checks:
        for r in runs:
            if not RunDir(r).file(check_file(norm)).is_file():
                err_console.print(f"checking {r}")
                check_run(r, CheckSettings(eps=_check_eps(r, norm, grid), long_steps=200, targets=targets,
                                           autoattack=False, seed=seed, norm=norm),
                          EvalContext(device, limit=limit, data_root=data_root))
    with evaluation(device, limit=limit, data_root=data_root) as ctx:
        settings = AttackSettings(steps=ensemble_steps, targets=targets, queries=queries, seed=seed, norm=norm).check()
        path = build_report(runs, out, settings, ctx, eps_grid=grid, steps=steps, index=index)
    out_console.print(f"wrote {path}")


def _check_eps(run: Path, norm: str, grid: list[float]) -> float | None:
    """The checks' eps for ``report --check``: the run's own (None) in its training norm, else the
    grid's middle."""
    return None if norm == norm_train(RunDir(run).config()) else grid[len(grid) // 2]


def card(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run directory (or --model ...)"),
    eps: str = typer.Option("", metavar="EPS", help="eps grid of the card (default: the paper's grid for the dataset)"),
    norm: Optional[str] = NORM,
    steps: Optional[int] = STEPS,
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    limit: int = LIMIT,
    run_checks: bool = typer.Option(False, "--check/--no-check", help="Run the masking checks first if the run has "
                                    "no check.json (else the card says 'not run')"),
    seed: int = SEED,
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """A model card: model_card.json (RobustBench's model-info fields where one exists; schema
    in robustgan/evaluation/model_card.schema.json) and model_card.md, in the run directory.
    Worst-case accuracy per eps with the exact protocol, the masking checks, training config,
    software versions and the weights' SHA-256.

    Examples:

      robustgan card runs/pgd-digits --eps 0.1,0.2,0.3 --check

      robustgan card --model mynet.py:build --weights mynet.safetensors --dataset digits --eps 0.1,0.2

      robustgan card runs/pgd-at-l2-digits --norm l2 --eps 1,2 --check
    """
    check_attack("ensemble", steps, targets)
    check_common(limit=limit, queries=queries)
    run = single_subject(run, model, weights, dataset, data_root, results)
    norm = resolve_norm(norm, run)
    grid = eps_grid(eps, RunDir(run).config().data.name, norm=norm)
    device = resolve_device(device)
    if run_checks and not RunDir(run).file(check_file(norm)).is_file():
        err_console.print(f"checking {run}")
        check_run(run, CheckSettings(eps=max(grid), autoattack=False, seed=seed, norm=norm),
                  EvalContext(device, limit=limit, data_root=data_root))
    with evaluation(device, limit=limit, data_root=data_root) as ctx:
        settings = AttackSettings(steps=steps, targets=targets, queries=queries, seed=seed, norm=norm).check()
        found = build_card(run, grid, settings, ctx)
    paths = write_card(run, found)
    out_console.print(f"wrote {paths[0]} and {paths[1]}")


def frontier(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run directories trained by robustgan (their training cost is recorded)"),
    eps: str = typer.Option("", metavar="EPS", help="The eps of the robustness axis (default: the middle of the paper's grid)"),
    norm: Optional[str] = NORM,
    steps: Optional[int] = STEPS,
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    limit: int = LIMIT,
    out: Path = typer.Option(Path("runs/frontier.png"), "--out", metavar="PATH", help="PNG file to write"),
    as_json: bool = typer.Option(False, "--json", help="Print the points as JSON on stdout"),
    seed: int = SEED,
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
):
    """What robustness costs: worst-case accuracy at one eps against training cost (forward +
    backward passes per training image, counted while training; log scale), one point per
    run, the Pareto front drawn, clean accuracy and the papers' PGD-40 beside each point.
    Prints the table, writes the plot. Accuracies come from the runs' evaluation caches.

    Examples:

      robustgan frontier runs/demo/* --eps 0.2

      robustgan frontier runs/pgd-digits runs/fgsm-rs-digits runs/trades-digits --eps 0.3 --json
    """
    check_attack("ensemble", steps, targets)
    check_common(limit=limit, queries=queries)
    writable(out)
    dataset = RunDir(runs[0]).config().data.name
    norm = resolve_norm(norm, runs)
    grid = eps_grid(eps, dataset, norm=norm)
    if eps:
        require(len(grid) == 1, "--eps takes one value: the frontier is drawn at one eps")
    at = grid[len(grid) // 2]
    with evaluation(resolve_device(device), limit=limit, data_root=data_root) as ctx:
        settings = AttackSettings(steps=steps, targets=targets, queries=queries, seed=seed, norm=norm).check()
        curves = [compute_curve(r, [at], settings, ctx) for r in runs]
    points = frontier_points(curves, at)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_frontier(points, at, out, f"{dataset}: robustness against training cost", caption(curves))
    title = f"robustness against training cost at eps {format_eps(at)}" + ("" if norm == "linf" else f" ({norm.upper()})")
    (err_console if as_json else out_console).print(frontier_table(points, title, caption(curves)))
    if as_json:
        sys.stdout.write(json.dumps({"eps": json_eps(at), "norm": norm, "n": curves[0].n, "attacks": curves[0].settings["attacks"],
                                     "points": [vars(p) for p in points]}) + "\n")
    err_console.print(f"wrote {out}")
