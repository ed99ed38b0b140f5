"""Evaluation commands of the ``robustgan`` CLI: curve, check, saliency, sweep, report.
They register on the app defined in ``robustgan.cli``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from robustgan.cli import app, err_console, fmt_eps, out_console, parse_eps_list
from robustgan.errors import RobustganError


def _eps_or_default(text: str, dataset: str, key: str = "eps_i") -> list[float]:
    from robustgan.evaluate.curves import EPS_I_GRIDS, EPS_T_GRIDS

    if text:
        return parse_eps_list(text)
    return (EPS_I_GRIDS if key == "eps_i" else EPS_T_GRIDS)[dataset]


@app.command()
def curve(
    runs: List[Path] = typer.Argument(..., help="Run directories (e.g. a sweep's runs)"),
    eps: str = typer.Option("", help="eps_i grid, comma-separated (default: the paper's grid for the dataset)"),
    attack: str = typer.Option("pgd", help="pgd | fgsm | autoattack"),
    steps: int = typer.Option(40, help="PGD steps"),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD step (default 2.5*eps/steps)"),
    restarts: int = typer.Option(1, help="PGD restarts"),
    table_eps: str = typer.Option("", "--table-eps", help="eps_i values for the point-wise tables (default: all)"),
    limit: int = typer.Option(0, help="Evaluate only the first N test images (0 = all)"),
    out: Path = typer.Option(Path("runs/curves"), "--out", help="Output folder"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """Robustness curves (accuracy vs eps_i, paper 000 Figs. 2-4), their areas, and the
    point-wise tables (Tables 2-4). Writes curves.png, curves.csv, tables.md, tables.csv.
    Results are cached in each run, so re-plotting costs nothing.

    Examples:

      robustgan curve runs/sweep-mnist/* --steps 40 --table-eps 0.1,0.3

      robustgan curve runs/atgan-digits runs/pgd-digits --eps 0.05,0.1,0.2,0.3 --limit 200
    """
    from rich.progress import Progress

    from robustgan.evaluate.curves import compute_curve, curves_csv, plot_curves, pointwise_tables
    from robustgan.runs import RunDir
    from robustgan.train import resolve_device

    if attack not in ("pgd", "fgsm", "autoattack"):
        raise RobustganError(f"--attack must be pgd, fgsm or autoattack; got {attack!r}")
    if steps <= 0 or restarts <= 0 or limit < 0:
        raise RobustganError("--steps and --restarts must be positive, --limit >= 0")
    dataset = RunDir(runs[0]).config().data.name
    grid = _eps_or_default(eps, dataset)
    device = resolve_device(device)
    with Progress(console=err_console, transient=True) as progress:
        curves = [compute_curve(r, grid, attack=attack, steps=steps, step_size=step_size, restarts=restarts,
                                limit=limit, device=device, data_root=data_root, progress=progress) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "curves.png", f"{dataset}: robustness curves")
    (out / "curves.csv").write_text(curves_csv(curves))
    md, table_csv = pointwise_tables(curves, parse_eps_list(table_eps) if table_eps else grid)
    (out / "tables.md").write_text(md)
    (out / "tables.csv").write_text(table_csv)
    table = Table(title=f"area under the robustness curve (n={curves[0].n})")
    for col in ("run", "method", "eps_t", "clean", "area"):
        table.add_column(col)
    for c in curves:
        table.add_row(str(c.run), c.method, fmt_eps(c.eps_t), f"{c.clean:.1%}", f"{c.auc:.3f}")
    out_console.print(table)
    out_console.print(f"wrote {out}/curves.png, curves.csv, tables.md, tables.csv")


@app.command()
def check(
    run: Path = typer.Argument(..., help="Run directory"),
    eps: Optional[str] = typer.Option(None, help="eps for the checks, e.g. 0.3 or 8/255 (default: the run's eval / training eps)"),
    steps: int = typer.Option(40, help="PGD steps of the reference attack"),
    long_steps: int = typer.Option(1000, "--long-steps", help="Steps of the long PGD"),
    restarts: int = typer.Option(5, help="Random restarts for the restart check"),
    surrogate: Optional[str] = typer.Option(None, help="Surrogate run for the transfer check, or 'auto' to train one"),
    autoattack: bool = typer.Option(True, "--autoattack/--no-autoattack", help="Run AutoAttack (needs torchattacks)"),
    autoattack_limit: int = typer.Option(200, "--autoattack-limit", help="Images for AutoAttack"),
    limit: int = typer.Option(0, help="Use only the first N test images (0 = all)"),
    tol: float = typer.Option(0.05, help="Accuracy difference tolerated as attack noise"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """Gradient-masking checks (paper 000 Table 5 and more). Exits 1 if any check warns.

    Examples:

      robustgan check runs/atgan-digits --surrogate auto

      robustgan check runs/pgd-mnist --eps 0.3 --long-steps 200 --limit 1000 --no-autoattack
    """
    from robustgan.evaluate.checks import check_run
    from robustgan.train import resolve_device

    if eps is not None:
        eps = parse_eps_list(eps)[0]
        if eps == 0 or math.isinf(eps):
            raise RobustganError(f"--eps must be in (0, 1], got {eps}")
    if min(steps, long_steps, restarts) <= 0 or limit < 0 or not 0 <= tol <= 1:
        raise RobustganError("--steps, --long-steps and --restarts must be positive, --tol in [0, 1]")

    def show(result):
        mark = "[green]pass[/green]" if result.passed else "[bold red]WARN[/bold red]"
        out_console.print(f"{mark}  {result.name:<14} {result.detail}")

    results = check_run(run, eps=eps, steps=steps, long_steps=long_steps, restarts=restarts, limit=limit,
                        surrogate=surrogate, autoattack=autoattack, autoattack_limit=autoattack_limit,
                        tol=tol, device=resolve_device(device), data_root=data_root, on_result=show)
    failed = [r.name for r in results if not r.passed]
    if failed:
        out_console.print(f"[bold red]possible gradient masking[/bold red]: {', '.join(failed)} (saved {run}/check.json)")
        raise typer.Exit(1)
    out_console.print(f"all {len(results)} checks passed (saved {run}/check.json)")


@app.command()
def saliency(
    runs: List[Path] = typer.Argument(..., help="Run directories, one row pair each"),
    index: int = typer.Option(0, "--index", "-i", help="Test image index"),
    eps_i: str = typer.Option("", "--eps-i", help="Test eps values (default: 3 from the dataset's grid)"),
    steps: int = typer.Option(40, help="PGD steps"),
    out: Path = typer.Option(Path("runs/saliency.png"), "--out", help="Output PNG"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """Adversarial images and gradient saliency maps per (eps_t, eps_i) (paper 000 Figs. 5-7).

    Examples:

      robustgan saliency runs/sweep/atgan-eps0.1 runs/sweep/atgan-eps0.3 --index 7 --eps-i 0.1,0.2,0.3
    """
    from robustgan.evaluate.curves import EPS_I_GRIDS
    from robustgan.evaluate.saliency import saliency_grid
    from robustgan.runs import RunDir

    dataset = RunDir(runs[0]).config().data.name
    grid = parse_eps_list(eps_i) if eps_i else EPS_I_GRIDS[dataset][::4][:3]
    if steps <= 0:
        raise RobustganError("--steps must be positive")
    path = saliency_grid(runs, index, grid, out, steps, data_root)
    out_console.print(f"wrote {path}")


@app.command()
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help="Base preset"),
    eps_t: str = typer.Option("", "--eps-t", help="Training eps values (default: the paper's grid for the dataset)"),
    methods: str = typer.Option("", help="Comma-separated methods (default: the config's), e.g. pgd_at,atgan"),
    frac: Optional[float] = typer.Option(None, help="Also train FracAT variants with this fraction"),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a key of the base config"),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default runs/sweep-<config>)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train one run per (method, eps_t); finished runs are skipped, interrupted ones resume.

    Examples:

      robustgan sweep -c configs/atgan-mnist.toml --methods pgd_at,atgan --frac 0.5 --set data.root=~/data

      robustgan sweep -c configs/atgan-digits.toml --eps-t 0.1,0.2,0.3 --methods pgd_at,atgan
    """
    from robustgan.config import load_config, check_frac
    from robustgan.sweep import run_sweep

    cfg = load_config(config, set_)
    grid = parse_eps_list(eps_t) if eps_t else None
    method_list = [m.strip() for m in methods.split(",") if m.strip()] or None
    fracs = [None] if frac is None else [None, frac]
    if frac is not None:
        check_frac(frac, "--frac")
    out = out or Path("runs") / f"sweep-{config.stem}"
    runs = run_sweep(cfg, out, grid, method_list, fracs, quiet, log=lambda m: err_console.print(m))
    out_console.print(f"{len(runs)} runs in {out}; plot them with: robustgan curve {out}/*")


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="Run directories"),
    out: Path = typer.Option(Path("runs/report.html"), "--out", help="HTML file to write"),
    eps: str = typer.Option("", help="eps_i grid for the curves (default: the paper's grid)"),
    steps: int = typer.Option(20, help="PGD steps for curves and saliency"),
    limit: int = typer.Option(0, help="Evaluate only the first N test images (0 = all)"),
    index: int = typer.Option(0, "--index", help="Test image for saliency and trends"),
    run_checks: bool = typer.Option(False, "--check/--no-check", help="Run the checks first where missing"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """One self-contained HTML page for a set of runs (images embedded).

    Examples:

      robustgan report runs/demo/* --out runs/demo/report.html

      robustgan report runs/sweep-mnist/* --steps 40 --check
    """
    from rich.progress import Progress

    from robustgan.evaluate.checks import check_run
    from robustgan.report.html import build_report
    from robustgan.runs import RunDir
    from robustgan.train import resolve_device

    if steps <= 0 or limit < 0:
        raise RobustganError("--steps must be positive, --limit >= 0")
    dataset = RunDir(runs[0]).config().data.name
    grid = _eps_or_default(eps, dataset)
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
