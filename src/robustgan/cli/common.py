"""What every command group shares: the consoles, eps parsing, and option definitions."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from robustgan.attacks import ATTACKS, DEFAULT_ATTACK, NORMS, attack_names, check_eps, get_norm
from robustgan.attacks.registry import DEFAULT_TARGETS
from robustgan.attacks.stages import ensemble_help
from robustgan.methods import norm_train
from robustgan.runs import RunDir
from robustgan.runtime import external_run
from robustgan.eps import grid_for, parse_number
from robustgan.errors import RobustganError

err_console = Console(stderr=True)
out_console = Console()

# options several commands take, defined once
DEVICE = typer.Option("auto", metavar="DEVICE", help="auto | cpu | cuda | cuda:N")
DATA_ROOT = typer.Option(None, "--data-root", metavar="DIR", help="Directory with the dataset files")
LIMIT = typer.Option(0, metavar="N", help="Use only the first N test images (0 = all)")
STEPS = typer.Option(None, metavar="N", help="Steps per attack (default: " + "; ".join(
    f"{spec.steps} for {name}" for name, spec in ATTACKS.items() if spec.steps) + ")")
ATTACK = typer.Option(DEFAULT_ATTACK, metavar="NAME", help=" | ".join(attack_names()) + f" (ensemble: {ensemble_help()}; "
                      "pgd --steps 40: the papers' protocol)")
QUERIES = typer.Option(None, "--queries", metavar="N", help="The ensemble's gradient-free stage: at most this many Square queries "
                       "per point and probe (default 50 x the ensemble's steps: 5000, AutoAttack's; 0 turns it off)")
TARGETS = typer.Option(DEFAULT_TARGETS, "--targets", metavar="K",
                       help="Target classes of the ensemble's targeted APGD, ranked at each point's worst example; "
                            "targets after the first only on points close to fooled (0: APGD-CE only)")
SEED = typer.Option(0, "--seed", metavar="N", help="Seed of the attacks' random starts (drawn per test point, so a "
                    "shard or a batch gets what one process gets)")
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout")
NORM = typer.Option(None, "--norm", metavar="NORM", help="Threat model: linf or l2, eps given in it (default: the "
                    "run's training norm, linf for a run trained without one)")
PROTOCOL = typer.Option(True, "--protocol/--no-protocol",
                        help="Also measure the papers' protocol (PGD-40) and show it beside the worst case")


def parse_eps_list(text: str, option: str = "--eps", norm: str | None = "linf") -> list[float]:
    """'0.1,0.2,8/255,inf' -> [0.1, 0.2, 0.0313..., inf], each checked for ``norm`` (None: the
    list's syntax only); a bad value is a one-line error."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise RobustganError(f"{option}: an empty value in {text!r} (use e.g. 0.1,0.2 or 8/255)")
        try:
            value = parse_number(part)
        except (ValueError, ZeroDivisionError):
            raise RobustganError(f"{option}: {part!r} is not a number (use e.g. 0.1,0.2 or 8/255)") from None
        values.append(value if norm is None else check_eps(value, norm))
    if not values:
        raise RobustganError(f"{option}: give at least one value")
    if len(set(values)) < len(values):
        raise RobustganError(f"{option}: a value given twice in {text!r}")
    return values


def parse_one_eps(text: str, option: str, norm: str = "linf") -> float:
    """One bounded, non-zero eps (e.g. ``--eps-max 16/255``)."""
    values = parse_eps_list(text, option, norm)
    require(len(values) == 1, f"{option} takes one value, got {text}")
    value = values[0]
    if value == 0 or math.isinf(value):
        raise RobustganError(f"{option} must be {'> 0 and finite' if norm == 'l2' else 'in (0, 1]'}, got {text}")
    return value


def eps_grid(text: str, dataset: str, option: str = "--eps", norm: str = "linf") -> list[float]:
    """The eps values given, or the paper's eps_i grid for the dataset (in L2, ``eps.L2_EPS_I_GRIDS``)."""
    return parse_eps_list(text, option, norm) if text else grid_for(dataset, norm=norm)


def resolve_norm(norm: str | None, runs: Path | list[Path]) -> str:
    """``--norm`` as given, else the runs' training norm (one-line errors for an unknown norm, and
    for runs trained in different norms without ``--norm``)."""
    if norm is None:
        trained = {norm_train(RunDir(run).config()) for run in ([runs] if isinstance(runs, Path) else runs)}
        require(len(trained) == 1, f"these runs were trained in different norms ({', '.join(sorted(trained))}): "
                                   "pass --norm")
        return trained.pop()
    require(norm in NORMS, f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def norm_and_eps(norm: str | None, eps: str | None, run: Path) -> tuple[str, list[float] | None]:
    """``--norm`` resolved for the run (``resolve_norm``) and ``--eps`` parsed in it; None without
    ``--eps``, where the run's own eps are meant, which must be in that norm (a one-line error)."""
    if eps:
        parse_eps_list(eps, norm=None)  # the list's own errors first, before the run is read
    norm = resolve_norm(norm, run)
    trained = norm_train(RunDir(run).config())
    require(bool(eps) or norm == trained, f"pass --eps: this run's eval and training eps are in "
                                          f"{get_norm(trained).title}")
    return norm, (parse_eps_list(eps, norm=norm) if eps else None)


def check_attack(attack: str, steps: int | None = None, targets: int = 0) -> None:
    """One-line errors for --attack, --steps and --targets."""
    if attack not in ATTACKS:
        raise RobustganError(f"--attack must be one of {', '.join(attack_names())}; got {attack!r}")
    require(steps is None or steps > 0, f"--steps must be positive, got {steps}")
    require(0 <= targets <= 9, f"--targets must be in 0..9, got {targets}")


def check_common(*, limit: int = 0, restarts: int = 1, batch_size: int = 1, queries: int | None = None) -> None:
    """One-line errors, each naming its option and value, for options several commands take."""
    at_least_zero("--limit", limit)
    positive("--restarts", restarts)
    positive("--batch-size", batch_size)
    require(queries is None or queries >= 0, f"--queries must be >= 0, got {queries}")


MODEL = typer.Option(None, "--model", metavar="MODULE:FACTORY", help="Your own classifier instead of a run: MODULE:FACTORY or FILE.py:FACTORY, "
                     "FACTORY() returning an nn.Module from [0, 1] images to logits")
WEIGHTS = typer.Option(None, "--weights", metavar="FILE", help="With --model: its weights, a .safetensors file")
DATASET = typer.Option(None, "--dataset", metavar="NAME", help="With --model: the dataset to evaluate on (digits, mnist, cifar10, "
                       "svhn, imagefolder, npz)")
RESULTS = typer.Option(None, "--results", metavar="DIR", help="With --model: where its cache, checks and card go "
                       "(default: next to the weights)")


def subject_runs(runs: list[Path] | None, model: str | None, weights: Path | None, dataset: str | None,
                 data_root: Path | None, results: Path | None) -> list[Path]:
    """The run directories a command evaluates: the RUN arguments, and for --model the
    directory ``runtime.external_run`` keeps for that model (created on first use)."""
    runs = list(runs or [])
    if model is None:
        require(weights is None and dataset is None and results is None, "--weights, --dataset and --results go with --model")
        require(bool(runs), "give a run directory, or --model MODULE:FACTORY --weights FILE.safetensors --dataset NAME")
        return runs
    require(weights is not None and dataset is not None, "--model needs --weights FILE.safetensors and --dataset NAME")
    return [*runs, external_run(model, weights, dataset, data_root=data_root, out=results)]


def single_subject(run: Path | None, model: str | None, weights: Path | None, dataset: str | None,
                   data_root: Path | None, results: Path | None) -> Path:
    """The one run directory a single-subject command (eval, check, card) works on: RUN or --model."""
    require(run is None or model is None, "give a run directory or --model, not both")
    return subject_runs([run] if run else [], model, weights, dataset, data_root, results)[0]


def positive(option: str, value) -> None:
    """A one-line error naming ``option`` and its value unless it is > 0."""
    require(value > 0, f"{option} must be positive, got {value}")


def at_least_zero(option: str, value) -> None:
    require(value >= 0, f"{option} must be >= 0, got {value}")


def writable(path: Path, option: str = "--out", folder: bool = False) -> None:
    """A one-line error before any work unless ``path`` (a file, or with ``folder`` a
    directory) can be written: an existing path is of the right kind (and an existing file
    writable), and a file can be made in the directory it goes in or, where that does not exist
    yet, in its nearest existing ancestor (a file made and deleted at once: permissions,
    read-only and pseudo file systems all answer). Leaves nothing behind."""
    path = Path(path).expanduser()
    try:
        if path.exists():
            require(path.is_dir() == folder, f"{option} {path}: " + ("not a directory" if folder else "is a directory"))
            require(folder or os.access(path, os.W_OK), f"{option} {path}: not writable")
        where = path if folder and path.is_dir() else path.parent
        while not where.exists():
            where = where.parent
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise RobustganError(f"{option} {path}: cannot write there ({err.strerror})") from None


def require(ok: bool, message: str) -> None:
    """A one-line error for an option value out of range."""
    if not ok:
        raise RobustganError(message)


def check_ensemble_steps(steps: int, console: Console, consequence: str) -> None:
    """--ensemble-steps: positive, and a note saying what a weaker ensemble than eval's does."""
    require(steps > 0, f"--ensemble-steps must be positive, got {steps}")
    if steps < ATTACKS[DEFAULT_ATTACK].steps:
        console.print(f"[yellow]note[/yellow]: a {steps}-step ensemble is weaker than eval's "
                      f"{ATTACKS[DEFAULT_ATTACK].steps}-step one: {consequence}")


def json_eps(eps: float):
    return "inf" if math.isinf(eps) else eps
