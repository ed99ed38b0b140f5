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

from robustgan.errors import Interrupted, RobustganError

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
            value = parse_number(part)
        except (ValueError, ZeroDivisionError):
            raise RobustganError(f"--eps: {part!r} is not a number (use e.g. 0.1,0.2 or 8/255)") from None
        values.append(check_eps(value))
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
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (runs torchrun --nproc_per_node=N)"),
):
    """Train a model into a run directory.

    Examples:

      robustgan train --config configs/pgd-at-digits.toml --out runs/pgd-digits

      robustgan train -c configs/pgd-at-mnist.toml --data-root ~/data --set method.eps=0.2

      robustgan train --out runs/pgd-digits --resume

      robustgan train -c configs/pgd-at-cifar10.toml --data-root ~/data --nproc 4
    """
    import os

    if nproc < 1:
        raise RobustganError(f"--nproc must be >= 1, got {nproc}")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_with_torchrun(nproc)
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


def _relaunch_with_torchrun(nproc: int) -> None:
    """Run this same ``train`` command under torchrun with ``nproc`` processes on this machine."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "robustgan", *args]
    raise SystemExit(subprocess.run(cmd).returncode)


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
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (faster convolutions)"),
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
              num_classes=geometry_for(cfg.data).num_classes, seed=seed, cache=EvalCache(run),
              channels_last=channels_last)
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
    """The main job: train standard, PGD-AT, ATGAN and GAN-AT on the embedded digits, run the
    robustness curves and gradient-masking checks, write <out>/report.html and a summary.

    Examples:

      robustgan demo

      robustgan demo --quick --out /tmp/demo
    """
    from robustgan.demo import run_demo

    run_demo(out, quick=quick)


# the evaluation commands live in their own module and register on `app`
from robustgan import cli_eval  # noqa: E402,F401


def main():
    try:
        app()
    except RobustganError as err:
        text = str(err) if isinstance(err, Interrupted) else f"error: {err}"
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
