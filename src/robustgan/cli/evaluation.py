"""Evaluation commands: eval, curve, check, saliency, trends, predict."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.table import Table

from robustgan import distributed
from robustgan.attacks import ATTACKS, AttackSettings, attack_label, get_norm
from robustgan.attacks.outputs import decisions_only_warning
from robustgan.cli.common import (ATTACK, DATA_ROOT, DATASET, DEVICE, JSON, LIMIT, MODEL, NORM, PROTOCOL, QUERIES, RESULTS,
                                  SEED, STEPS, TARGETS, norm_and_eps, resolve_norm,
                                  WEIGHTS, check_attack, check_common, check_ensemble_steps, eps_grid, err_console, json_eps,
                                  out_console, parse_eps_list, positive,
                                  parse_one_eps, require, single_subject, subject_runs, writable)
from robustgan.eps import format_eps, grid_for
from robustgan.methods import method_class
from robustgan.evaluation.context import EvalContext, evaluation
from robustgan.evaluation.engine import Subject
from robustgan.evaluation.checks import CheckSettings, check_file, check_run, overall_status, summary_line
from robustgan.evaluation.curves import (area, compute_curve, curves_csv, min_norm_distances, plot_curves,
                                      pointwise_tables)
from robustgan.evaluation.predict import predict as classify
from robustgan.evaluation.saliency import saliency_grid
from robustgan.evaluation.trends import run_trends
from robustgan.runs import RunDir
from robustgan.runtime import default_eps, resolve_device, training_cost

STEP_SIZE = typer.Option(None, "--step-size", metavar="SIZE", help="PGD step (default 2.5*eps/steps)")
RESTARTS = typer.Option(1, metavar="N", help="PGD random restarts (each sample keeps its worst case)")


# Most of its lines are the typer signature (one option a line, as in every command here); the
# body is validate, evaluate, print, with check_eval_options, eval_table and eval_json as its pieces.
def eval_(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run directory (or --model ...)"),
    attack: str = ATTACK,
    eps: str = typer.Option("", metavar="EPS", help="Comma-separated eps values in pixel scale (8/255 allowed); default: the run's eval eps"),
    norm: Optional[str] = NORM,
    steps: Optional[int] = STEPS,
    step_size: Optional[float] = STEP_SIZE,
    restarts: int = RESTARTS,
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    protocol: bool = PROTOCOL,
    min_norm: bool = typer.Option(False, "--min-norm", help="Also each point's smallest fooling eps (bisection "
                                  "between grid points, ensemble only); prints its median and quartiles"),
    data_root: Optional[Path] = DATA_ROOT,
    limit: int = LIMIT,
    batch_size: int = typer.Option(256, "--batch-size", metavar="N"),
    device: str = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout"),
    seed: int = SEED,
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (faster convolutions)"),
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """Clean and adversarial accuracy of a run's full defended model (or your own, with
    --model), per eps.

    By default the worst case per point over the ensemble's stages (docs/evaluation.md), with the
    papers' PGD-40 beside it. Under `torchrun --nproc_per_node N -m robustgan eval ...`
    the test points are sharded across the processes (same numbers as one process).

    Examples:

      robustgan eval runs/pgd-digits --eps 0.1,0.2,0.3 --json

      robustgan eval runs/pgd-digits --attack pgd --steps 40 --eps 0.3

      robustgan eval runs/atgan-cifar10 --eps 2/255,8/255 --targets 9 --limit 1000 --min-norm

      robustgan eval runs/pgd-digits --norm l2 --eps 0.5,1,2

      robustgan eval --model mynet.py:build --weights mynet.safetensors --dataset cifar10 --data-root ~/data --eps 8/255
    """
    check_eval_options(attack, steps, targets, restarts, limit, batch_size, step_size, min_norm)
    check_common(queries=queries)
    run = single_subject(run, model, weights, dataset, data_root, results)
    norm, eps_list = norm_and_eps(norm, eps, run)
    eps_list = eps_list or [default_eps(RunDir(run).config())]
    require(any(e > 0 for e in eps_list), "pass --eps (this model has no eval or training eps)")
    device = resolve_device(device)
    here = distributed.setup(device)
    device = distributed.device_for(device, here)
    start = time.perf_counter()
    settings = AttackSettings(attack, steps, step_size, restarts, targets, queries, seed, norm).check()
    with evaluation(device, limit=limit, data_root=data_root, batch_size=batch_size,
                    show=here.is_main, channels_last=channels_last) as ctx:
        subject = Subject.open(run, ctx)
        curve = compute_curve(subject, eps_list, settings, ctx, protocol=protocol)
        require(not min_norm or curve.settings["attack"] == "ensemble",
                f"--min-norm needs the ensemble; this model is randomized, evaluated with {curve.settings['attack']}")
        distances = min_norm_distances(subject, curve, ctx) if min_norm else None
    if not here.is_main:
        return
    (err_console if as_json else out_console).print(eval_table(run, curve, distances))
    if as_json:
        result = eval_json(subject, curve, distances, time.perf_counter() - start)
        sys.stdout.write(json.dumps(result) + "\n")


def check_eval_options(attack, steps, targets, restarts, limit, batch_size, step_size, min_norm) -> None:
    """One-line errors for eval's attack settings."""
    check_attack(attack, steps, targets)
    check_common(limit=limit, restarts=restarts, batch_size=batch_size)
    require(step_size is None or step_size > 0, f"--step-size must be positive, got {step_size}")
    require(not min_norm or attack == "ensemble", "--min-norm needs --attack ensemble")


def eval_table(run, curve, distances) -> Table:
    """The eval result as a table: accuracy per eps, the papers' protocol beside it."""
    s = curve.settings
    table = Table(title=f"{run}: {attack_label(s)}, n={curve.n}")
    table.add_column("eps" + ("" if s.get("norm", "linf") == "linf" else f" ({get_norm(s['norm']).title})"))
    table.add_column("accuracy", justify="right")
    paper = curve.protocol is not None
    if paper:
        table.add_column(f"{s['protocol'].upper()} (papers' protocol)", justify="right")
    table.add_row("clean", f"{curve.clean:.2%}", *([""] if paper else []))
    bound = "<= " if s.get("decisions_only") else ""  # outputs that carry only decisions: upper bounds
    for i, (e, acc) in enumerate(zip(curve.eps, curve.acc)):
        table.add_row(format_eps(e), f"{bound}{acc:.2%}", *([f"{bound}{curve.protocol[i]:.2%}"] if paper else []))
    captions = [f"[bold red]{decisions_only_warning(s['decisions_only'])}[/bold red]"] if bound else []
    if distances is not None:
        q = distances.quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
        captions.append(f"smallest fooling eps per point: median {q[1]:.4f} (quartiles {q[0]:.4f}, {q[2]:.4f})")
    table.caption = "\n".join(captions) or None
    return table


def eval_json(subject: Subject, curve, distances, seconds) -> dict:
    s, run = curve.settings, subject.path
    result = {"run": str(run), "n": curve.n, "attack": s["attack"], "norm": s["norm"], "attacks": s["attacks"],
              "steps": s["steps"],
              "targets": s["targets"], "queries": s["queries"], "restarts": s["restarts"], "seed": s["seed"],
              "protocol": s["protocol"],
              "seconds": round(seconds, 3), "cost": s["cost"], "clean": curve.clean,
              "decisions_only": s["decisions_only"],
              "results": [{"eps": json_eps(e), "accuracy": acc,
                           **({"protocol_accuracy": curve.protocol[i]} if curve.protocol is not None else {})}
                          for i, (e, acc) in enumerate(zip(curve.eps, curve.acc))]}
    result |= method_class(subject.config.method.name).provenance(subject.config) or {}  # trained elsewhere: which
    result["training_cost"] = training_cost(run)  # None: trained elsewhere or before passes were counted
    if distances is not None:
        result["min_eps"] = [json_eps(d) for d in distances.tolist()]
    return result


# Most of its lines are the typer signature, one option a line (as eval_ and check).
def curve(
    runs: Optional[List[Path]] = typer.Argument(None, metavar="RUN...", help="Run directories (e.g. a sweep's runs)"),
    eps: str = typer.Option("", metavar="EPS", help="eps_i grid, comma-separated (default: the paper's grid for the dataset)"),
    norm: Optional[str] = NORM,
    attack: str = ATTACK,
    steps: Optional[int] = STEPS,
    step_size: Optional[float] = STEP_SIZE,
    restarts: int = RESTARTS,
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    protocol: bool = PROTOCOL,
    table_eps: str = typer.Option("", "--table-eps", metavar="EPS", help="eps_i values for the point-wise tables (default: all)"),
    limit: int = LIMIT,
    out: Path = typer.Option(Path("runs/curves"), "--out", metavar="PATH", help="Output folder"),
    seed: int = SEED,
    as_json: bool = JSON,
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """Robustness curves (accuracy vs eps_i, paper 000 Figs. 2-4), their areas, and the
    point-wise tables (Tables 2-4). Writes curves.png, curves.csv, tables.md, tables.csv.
    By default the worst-case ensemble, with the papers' PGD-40 beside it (x markers, and in
    parentheses in the tables). Results are cached per point in each run, so re-plotting
    costs nothing and adding an eps point computes only that point.

    Examples:

      robustgan curve runs/sweep-mnist/* --table-eps 0.1,0.3

      robustgan curve runs/atgan-digits runs/pgd-digits --eps 0.05,0.1,0.2,0.3 --limit 200

      robustgan curve runs/sweep-mnist/* --attack pgd --steps 40   # the papers' protocol alone

      robustgan curve runs/pgd-at-l2-digits --norm l2   # L2 radii (default grid 0.5..3 on 28x28 images)
    """
    check_attack(attack, steps, targets)
    check_common(limit=limit, restarts=restarts, queries=queries)
    writable(out, folder=True)
    runs = subject_runs(runs, model, weights, dataset, data_root, results)
    dataset = RunDir(runs[0]).config().data.name
    norm = resolve_norm(norm, runs)
    grid = eps_grid(eps, dataset, norm=norm)
    table_grid = parse_eps_list(table_eps, "--table-eps", norm) if table_eps else grid
    with evaluation(resolve_device(device), limit=limit, data_root=data_root) as ctx:
        settings = AttackSettings(attack, steps, step_size, restarts, targets, queries, seed, norm).check()
        curves = [compute_curve(r, grid, settings, ctx, protocol=protocol) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "curves.png", f"{dataset}: robustness curves")
    (out / "curves.csv").write_text(curves_csv(curves))
    md, table_csv = pointwise_tables(curves, table_grid)
    (out / "tables.md").write_text(md)
    (out / "tables.csv").write_text(table_csv)
    console = err_console if as_json else out_console  # --json: stdout holds the JSON alone
    console.print(area_table(curves))
    console.print(f"wrote {out}/curves.png, curves.csv, tables.md, tables.csv")
    if as_json:
        sys.stdout.write(json.dumps([curve_json(c) for c in curves], indent=1) + "\n")


def area_table(curves) -> Table:
    paper = curves[0].protocol is not None
    table = Table(title=f"area under the robustness curve ({attack_label(curves[0].settings)}, n={curves[0].n})")
    for col in ("run", "method", "eps_t", "clean", "area", *(["area, PGD-40 (papers' protocol)"] if paper else [])):
        table.add_column(col)
    for c in curves:
        table.add_row(str(c.run), c.method, format_eps(c.eps_t), f"{c.clean:.1%}", f"{c.auc:.3f}",
                      *([f"{area(c.eps, c.protocol):.3f}"] if paper else []))
    return table


def curve_json(c) -> dict:
    """One run's curve as `curve --json` prints it (the keys of `eval --json`'s results)."""
    return {"run": str(c.run), "method": c.method, "n": c.n, "clean": c.clean, "area": c.auc,
            "attack": attack_label(c.settings), "norm": c.settings["norm"],
            "results": [{"eps": json_eps(e), "accuracy": a, **({"protocol_accuracy": p} if p is not None else {})}
                        for e, a, p in zip(c.eps, c.acc, c.protocol or [None] * len(c.eps))]}


# Most of its lines are the typer signature, one option a line (as eval_ and curve).
def check(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run directory (or --model ...)"),
    eps: Optional[str] = typer.Option(None, metavar="EPS", help="eps for the checks, e.g. 0.3 or 8/255 (default: the run's eval / training eps)"),
    norm: Optional[str] = NORM,
    steps: int = typer.Option(40, metavar="N", help="PGD steps of the reference attack (the papers' protocol)"),
    long_steps: int = typer.Option(1000, "--long-steps", metavar="N", help="Steps of the long PGD (must exceed --steps)"),
    restarts: int = typer.Option(5, metavar="N", help="Random restarts for the restart check"),
    surrogate: Optional[str] = typer.Option(None, metavar="RUN", help="Surrogate run for the transfer check, or 'auto' to train one"),
    autoattack: bool = typer.Option(True, "--autoattack/--no-autoattack", help="Run AutoAttack (needs torchattacks)"),
    autoattack_limit: int = typer.Option(200, "--autoattack-limit", metavar="N", help="Images for AutoAttack"),
    limit: int = LIMIT,
    tol: Optional[float] = typer.Option(None, metavar="FRACTION", help="Minimum accuracy gap every paired check warns at, instead of "
                                                   "each check's own (docs/evaluation.md)"),
    targets: int = TARGETS,
    queries: Optional[int] = QUERIES,
    ensemble_steps: int = typer.Option(ATTACKS["ensemble"].steps, "--ensemble-steps", metavar="N", help="APGD steps per attack of the worst-case "
                                                                       "ensemble (the protocol, bound and autoattack checks)"),
    seed: int = SEED,
    as_json: bool = typer.Option(False, "--json", help="Print check.json on stdout (the lines go to stderr)"),
    device: str = DEVICE,
    data_root: Optional[Path] = DATA_ROOT,
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """Gradient-masking checks (paper 000 Table 5 and more): each says pass, WARN or skipped.
    Exits 1 if any check warns; skipped checks alone exit 0 (and are named in the summary).

    Examples:

      robustgan check runs/atgan-digits --surrogate auto

      robustgan check runs/pgd-mnist --eps 0.3 --long-steps 200 --limit 1000 --no-autoattack

      robustgan check --model mynet.py:build --weights mynet.safetensors --dataset mnist --data-root ~/data --eps 0.3

      robustgan check runs/pgd-at-l2-digits --norm l2 --eps 2   # saved to check-l2.json
    """
    run = single_subject(run, model, weights, dataset, data_root, results)
    for option, value in (("--steps", steps), ("--long-steps", long_steps), ("--autoattack-limit", autoattack_limit)):
        positive(option, value)
    check_common(limit=limit, restarts=restarts, queries=queries)
    check_attack("ensemble", None, targets)
    require(tol is None or 0 <= tol <= 1, f"--tol must be in [0, 1], got {tol}")
    require(long_steps > steps, f"--long-steps ({long_steps}) must exceed --steps ({steps})")
    norm, _ = norm_and_eps(norm, eps, run)
    eps_value = parse_one_eps(eps, "--eps", norm) if eps is not None else None
    console = err_console if as_json else out_console  # --json: stdout holds the JSON alone
    check_ensemble_steps(ensemble_steps, console, "bound and autoattack may warn falsely, protocol understates "
                                                  "PGD's gap")
    settings = CheckSettings(eps=eps_value, steps=steps, long_steps=long_steps, restarts=restarts, tol=tol,
                             ensemble_steps=ensemble_steps, targets=targets, queries=queries, autoattack=autoattack,
                             autoattack_limit=autoattack_limit, seed=seed, norm=norm)
    ctx = EvalContext(resolve_device(device), limit=limit, data_root=data_root)
    results = check_run(run, settings, ctx, surrogate=surrogate, on_result=lambda result: show_check(result, console))
    summary, saved = summary_line(results), RunDir(run).file(check_file(norm))
    if as_json:
        sys.stdout.write(saved.read_text().rstrip("\n") + "\n")
    if overall_status(results) == "warn":
        console.print(f"[bold red]possible gradient masking[/bold red]: {summary} (saved {saved})")
        raise typer.Exit(1)
    console.print(f"{summary} (saved {saved})")


CHECK_MARKS = {"pass": "[green]pass[/green]   ", "warn": "[bold red]WARN[/bold red]   ", "skipped": "[dim]skipped[/dim]"}


def show_check(result, console) -> None:
    console.print(f"{CHECK_MARKS[result.status]}  {result.name:<15} {result.detail}")


def saliency(
    runs: Optional[List[Path]] = typer.Argument(None, metavar="RUN...", help="Run directories, one row pair each"),
    index: int = typer.Option(0, "--index", "-i", metavar="INDEX", help="Test image index"),
    eps: str = typer.Option("", "--eps", metavar="EPS", help="Test eps values, comma-separated (default: 3 from the "
                            "dataset's grid)"),
    eps_i: str = typer.Option("", "--eps-i", hidden=True, help="The old name of --eps"),
    norm: Optional[str] = NORM,
    device: str = DEVICE,
    steps: int = typer.Option(40, metavar="N", help="PGD steps for the adversarial images"),
    out: Path = typer.Option(Path("runs/saliency.png"), "--out", metavar="PATH", help="Output PNG"),
    data_root: Optional[Path] = DATA_ROOT,
    model: Optional[str] = MODEL,
    weights: Optional[Path] = WEIGHTS,
    dataset: Optional[str] = DATASET,
    results: Optional[Path] = RESULTS,
):
    """Adversarial images and gradient saliency maps per (eps_t, eps_i) (paper 000 Figs. 5-7).

    Examples:

      robustgan saliency runs/sweep/atgan-eps0.1 runs/sweep/atgan-eps0.3 --index 7 --eps 0.1,0.2,0.3
    """
    positive("--steps", steps)
    writable(out)
    runs = subject_runs(runs, model, weights, dataset, data_root, results)
    dataset = RunDir(runs[0]).config().data.name
    require(not (eps and eps_i), "give --eps (--eps-i is its old name), not both")
    eps, option = (eps_i, "--eps-i") if eps_i else (eps, "--eps")
    norm = resolve_norm(norm, runs)
    grid = parse_eps_list(eps, option, norm) if eps else grid_for(dataset, norm=norm)[::4][:3]
    path = saliency_grid(runs, index, grid, out, steps, data_root, resolve_device(device), norm=norm)
    out_console.print(f"wrote {path}")


def trends(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory"),
    index: int = typer.Option(0, "--index", "-i", metavar="INDEX", help="Test image index"),
    eps_max: Optional[str] = typer.Option(None, "--eps-max", metavar="EPS", help="Largest perturbation, e.g. 0.3 or 16/255 (default: the run's eps)"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="PATH", help="Output folder (default RUN/trends)"),
    data_root: Optional[Path] = DATA_ROOT,
    device: str = DEVICE,
):
    """Logit trends along random, FGSM, PGD and generator directions (paper 002, Fig. 5).

    Writes trends_<index>.png and trends_<index>.csv (one row per direction and scale).

    Examples:

      robustgan trends runs/gan-at-digits-grad --index 3

      robustgan trends runs/pgd-digits --eps-max 0.3 --out figures/
    """
    value = parse_one_eps(eps_max, "--eps-max") if eps_max is not None else None
    writable(out if out is not None else run / "trends", folder=True)
    png, csv_path, found = run_trends(run, index, value, out, data_root, resolve_device(device))
    for t in found:
        where = f"overtaken at +{t.crossing:.3f}" if t.crossing is not None else "never overtaken"
        out_console.print(f"{t.name:>10}: {where}")
    out_console.print(f"wrote {png} and {csv_path}")


def predict(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory"),
    images: List[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files (PNG, JPEG, ...)"),
    device: str = DEVICE,
):
    """Classify image files with a run's defended model (converted to grey/RGB and resized
    to the run's dataset as needed). Prints path, class index, confidence and class name
    (an imagefolder run's folder name), tab-separated.

    Examples:

      robustgan predict runs/demo/atgan digit.png another.png
    """
    for path, label, confidence, name in classify(run, images, resolve_device(device)):
        sys.stdout.write(f"{path}\t{label}\t{confidence:.3f}\t{name}\n")  # tab-separated: path, class, confidence, name
