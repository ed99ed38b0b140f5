"""The ``robustgan`` command line (typer). Errors a user can cause print one line and exit 2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from robustgan.errors import RobustganError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and evaluate GAN-based adversarial defenses (ATGAN, GAN-AT) and their baselines.")
err_console = Console(stderr=True)
out_console = Console()


def parse_eps_list(text: str) -> list[float]:
    """'0.1,0.2,8/255,inf' -> [0.1, 0.2, 0.0313..., inf]."""
    from robustgan.attacks import check_eps
    from robustgan.config import parse_number

    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(check_eps(parse_number(part)))
        except ValueError:
            raise RobustganError(f"--eps: {part!r} is not a number (use e.g. 0.1,0.2 or 8/255)") from None
    if not values:
        raise RobustganError("--eps: give at least one value")
    return values


def fmt_eps(eps: float) -> str:
    if math.isinf(eps):
        return "inf"
    for den in (255,):
        if abs(eps * den - round(eps * den)) < 1e-6 and eps * den >= 1 and eps < 0.1:
            return f"{round(eps * den)}/{den}"
    return f"{eps:g}"


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML preset, e.g. configs/pgd-at-digits.toml"),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a key: --set method.eps=0.3 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<config name>)"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint"),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after this many epochs (resumable)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Directory with the dataset files"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines"),
):
    """Train a model into a run directory.

    Examples:

      robustgan train --config configs/pgd-at-digits.toml --out runs/pgd-digits

      robustgan train -c configs/pgd-at-mnist.toml --data-root ~/data --set method.eps=0.2

      robustgan train --out runs/pgd-digits --resume
    """
    from robustgan.config import load_config
    from robustgan.train import fit

    if resume:
        if out is None:
            raise RobustganError("--resume needs --out RUN_DIR")
        fit(None, out, resume=True, quiet=quiet, stop_after=stop_after, data_root=data_root)
        return
    if config is None:
        raise RobustganError("give --config PRESET (see configs/) or --resume --out RUN_DIR")
    cfg = load_config(config, set_)
    out = out or Path("runs") / config.stem
    fit(cfg, out, quiet=quiet, stop_after=stop_after, data_root=data_root)


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="Run directory"),
    attack: str = typer.Option("pgd", help="fgsm | pgd | autoattack"),
    eps: str = typer.Option("", help="Comma-separated eps values in pixel scale (8/255 allowed); default: the run's eval eps"),
    steps: int = typer.Option(40, help="PGD steps"),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD step (default 2.5*eps/steps)"),
    restarts: int = typer.Option(1, help="PGD random restarts (each sample keeps its worst case)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Directory with the dataset files"),
    limit: int = typer.Option(0, help="Evaluate only the first N test images (0 = all)"),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout"),
    seed: int = typer.Option(0, help="Seed for random starts"),
):
    """Clean and adversarial accuracy of a run's full defended model, per eps.

    Examples:

      robustgan eval runs/pgd-digits --attack pgd --eps 0.1,0.2,0.3 --steps 40

      robustgan eval runs/atgan-cifar10 --eps 2/255,8/255 --restarts 5 --limit 1000 --json
    """
    from rich.progress import Progress

    import robustgan
    from robustgan.evaluate import ATTACKS
    from robustgan.evaluate.cache import EvalCache
    from robustgan.evaluate.robustness import run_accuracy
    from robustgan.runs import RunDir
    from robustgan.train import geometry_for, load_split, resolve_device

    if attack not in ATTACKS[1:]:
        raise RobustganError(f"--attack must be one of fgsm, pgd, autoattack; got {attack!r}")
    if steps <= 0 or restarts <= 0 or limit < 0 or batch_size <= 0:
        raise RobustganError("--steps, --restarts and --batch-size must be positive, --limit >= 0")
    if step_size is not None and step_size <= 0:
        raise RobustganError(f"--step-size must be positive, got {step_size}")
    cfg = RunDir(run).config()
    eps_list = parse_eps_list(eps) if eps else [cfg.train.eval_eps or getattr(cfg.method, "eps", 0.0)]
    model = robustgan.load(run)
    x, y = load_split(cfg.data, "test", data_root)
    if limit:
        x, y = x[:limit], y[:limit]
    device = resolve_device(device)
    model = model.to(device)
    kw = dict(steps=steps, step_size=step_size, restarts=restarts, batch_size=batch_size, device=device,
              num_classes=geometry_for(cfg.data).num_classes, seed=seed, cache=EvalCache(run))
    rows = []
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("clean", total=len(y))
        clean = run_accuracy(run, model, x, y, attack="none", progress=progress, task=task, **kw)
        for e in eps_list:
            task = progress.add_task(f"{attack} eps={fmt_eps(e)}", total=len(y))
            rows.append({"eps": e, "accuracy": run_accuracy(run, model, x, y, attack=attack, eps=e, progress=progress,
                                                            task=task, **kw)})
    result = {"run": str(run), "n": len(y), "attack": attack, "steps": steps if attack == "pgd" else None,
              "restarts": restarts if attack == "pgd" else None, "clean": clean, "results": rows}
    table = Table(title=f"{run}: {attack}" + (f"-{steps} x{restarts}" if attack == "pgd" else "") + f", n={len(y)}")
    table.add_column("eps")
    table.add_column("accuracy", justify="right")
    table.add_row("clean", f"{clean:.2%}")
    for row in rows:
        table.add_row(fmt_eps(row["eps"]), f"{row['accuracy']:.2%}")
    if as_json:
        err_console.print(table)
        sys.stdout.write(json.dumps({**result, "results": [{**r, "eps": _json_eps(r["eps"])} for r in rows]}) + "\n")
    else:
        out_console.print(table)


def _json_eps(eps: float):
    return "inf" if math.isinf(eps) else eps


@app.command()
def trends(
    run: Path = typer.Argument(..., help="Run directory"),
    index: int = typer.Option(0, "--index", "-i", help="Test image index"),
    eps_max: Optional[str] = typer.Option(None, "--eps-max", help="Largest perturbation, e.g. 0.3 or 16/255 (default: the run's eps)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/trends)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Directory with the dataset files"),
):
    """Logit trends along random, FGSM, PGD and generator directions (paper 002, Fig. 5).

    Writes trends_<index>.png and trends_<index>.csv (one row per direction and scale).

    Examples:

      robustgan trends runs/gan-at-digits-grad --index 3

      robustgan trends runs/pgd-digits --eps-max 0.3 --out figures/
    """
    from robustgan.evaluate.trends import run_trends

    value = None
    if eps_max is not None:
        value = parse_eps_list(eps_max)[0]
        if value == 0 or math.isinf(value):
            raise RobustganError(f"--eps-max must be in (0, 1], got {eps_max}")
    png, csv_path, found = run_trends(run, index, value, out, data_root)
    for t in found:
        where = f"overtaken at +{t.crossing:.3f}" if t.crossing is not None else "never overtaken"
        out_console.print(f"{t.name:>10}: {where}")
    out_console.print(f"wrote {png} and {csv_path}")


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


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory"),
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...)"),
):
    """Classify image files with a run's defended model (converted to grey/RGB and resized
    to the run's dataset as needed).

    Examples:

      robustgan predict runs/demo/atgan digit.png another.png
    """
    from robustgan.predict import predict as classify

    for path, label, confidence in classify(run, images):
        sys.stdout.write(f"{path}\t{label}\t{confidence:.3f}\n")  # tab-separated: path, class, confidence


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's runs go"),
    quick: bool = typer.Option(False, "--quick", help="A reduced version for smoke tests"),
):
    """Train standard and PGD-AT models on the embedded digits data and compare them."""
    from robustgan.demo import run_demo

    run_demo(out, quick=quick)


def main():
    try:
        app()
    except RobustganError as err:
        err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
