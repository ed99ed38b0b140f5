"""Report commands: report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import Progress

from robustgan.cli.common import DATA_ROOT, DEVICE, LIMIT, eps_grid, err_console, out_console, require
from robustgan.evaluate.checks import check_run
from robustgan.report.html import build_report
from robustgan.runs import RunDir
from robustgan.runtime import resolve_device


def report(
    runs: List[Path] = typer.Argument(..., help="Run directories"),
    out: Path = typer.Option(Path("runs/report.html"), "--out", help="HTML file to write"),
    eps: str = typer.Option("", help="eps_i grid for the curves (default: the paper's grid)"),
    steps: int = typer.Option(20, help="PGD steps of the saliency images (curves: the worst-case ensemble, PGD-40 beside it)"),
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
    require(steps > 0 and limit >= 0, "--steps must be positive, --limit >= 0")
    grid = eps_grid(eps, RunDir(runs[0]).config().data.name)
    device = resolve_device(device)
    if run_checks:
        for r in runs:
            if not RunDir(r).file("check.json").is_file():
                err_console.print(f"checking {r}")
                check_run(r, limit=limit, device=device, data_root=data_root, autoattack=False, long_steps=200)
    with Progress(console=err_console, transient=True) as progress:
        path = build_report(runs, out, eps_grid=grid, steps=steps, limit=limit, index=index, device=device,
                            data_root=data_root, progress=progress)
    out_console.print(f"wrote {path}")
