"""Report commands: report, card."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import Progress

from robustgan.cli.common import (DATA_ROOT, DATASET, DEVICE, LIMIT, MODEL, RESULTS, STEPS, TARGETS, WEIGHTS, eps_grid,
                                  err_console, out_console, require, single_subject)
from robustgan.evaluate.card import build_card, write_card
from robustgan.evaluate.checks import check_run
from robustgan.report.html import build_report
from robustgan.runs import RunDir
from robustgan.runtime import resolve_device


def report(
    runs: List[Path] = typer.Argument(..., help="Run directories"),
    out: Path = typer.Option(Path("runs/report.html"), "--out", help="HTML file to write"),
    eps: str = typer.Option("", help="eps_i grid for the curves (default: the paper's grid)"),
    steps: int = typer.Option(20, help="PGD steps of the saliency images (curves: the worst-case ensemble, PGD-40 beside it)"),
    targets: int = TARGETS,
    limit: int = LIMIT,
    index: int = typer.Option(0, "--index", help="Test image for saliency and trends"),
    run_checks: bool = typer.Option(False, "--check/--no-check", help="Run the checks first where missing"),
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
):
    """One self-contained HTML page for a set of runs (images embedded).

    Examples:

      robustgan report runs/demo/* --out runs/demo/report.html

      robustgan report runs/sweep-mnist/* --check
    """
    require(steps > 0 and limit >= 0 and 0 <= targets <= 9, "--steps must be positive, --limit >= 0, --targets in 0..9")
    grid = eps_grid(eps, RunDir(runs[0]).config().data.name)
    device = resolve_device(device)
    if run_checks:
        for r in runs:
            if not RunDir(r).file("check.json").is_file():
                err_console.print(f"checking {r}")
                check_run(r, limit=limit, device=device, data_root=data_root, autoattack=False, long_steps=200,
                          targets=targets)
    with Progress(console=err_console, transient=True) as progress:
        path = build_report(runs, out, eps_grid=grid, steps=steps, limit=limit, index=index, device=device,
                            data_root=data_root, progress=progress, targets=targets)
    out_console.print(f"wrote {path}")


def card(
    run: Optional[Path] = typer.Argument(None, help="Run directory (or --model ...)"),
    eps: str = typer.Option("", help="eps grid of the card (default: the paper's grid for the dataset)"),
    steps: Optional[int] = STEPS,
    targets: int = TARGETS,
    limit: int = LIMIT,
    run_checks: bool = typer.Option(False, "--check/--no-check", help="Run the masking checks first if the run has "
                                    "no check.json (else the card says 'not run')"),
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """A model card: model_card.json (RobustBench's model-info fields where one exists; schema
    in robustgan/evaluate/model_card.schema.json) and model_card.md, in the run directory.
    Worst-case accuracy per eps with the exact protocol, the masking checks, training config,
    software versions and the weights' SHA-256.

    Examples:

      robustgan card runs/pgd-digits --eps 0.1,0.2,0.3 --check

      robustgan card --model mynet.py:build --weights mynet.safetensors --dataset digits --eps 0.1,0.2
    """
    require(limit >= 0 and (steps is None or steps > 0) and 0 <= targets <= 9,
            "--limit >= 0, --steps positive, --targets in 0..9")
    run = single_subject(run, model, weights, dataset, data_root, results)
    grid = eps_grid(eps, RunDir(run).config().data.name)
    device = resolve_device(device)
    if run_checks and not RunDir(run).file("check.json").is_file():
        err_console.print(f"checking {run}")
        check_run(run, eps=max(grid), limit=limit, device=device, data_root=data_root, autoattack=False)
    with Progress(console=err_console, transient=True) as progress:
        found = build_card(run, grid, limit=limit, steps=steps, targets=targets, device=device, data_root=data_root,
                           progress=progress)
    paths = write_card(run, found)
    out_console.print(f"wrote {paths[0]} and {paths[1]}")
