"""What every command group shares: the consoles, eps parsing, and option definitions."""

from __future__ import annotations

import math

import typer
from rich.console import Console

from robustgan.attacks import ATTACK_NAMES, check_eps
from robustgan.eps import grid_for, parse_number
from robustgan.errors import RobustganError

err_console = Console(stderr=True)
out_console = Console()

# options several commands take, defined once
DEVICE = typer.Option("auto", help="auto | cpu | cuda | cuda:N")
DATA_ROOT = typer.Option(None, "--data-root", help="Directory with the dataset files")
LIMIT = typer.Option(0, help="Use only the first N test images (0 = all)")
STEPS = typer.Option(40, help="PGD steps")
ATTACK = typer.Option("pgd", help=" | ".join(ATTACK_NAMES))


def parse_eps_list(text: str, option: str = "--eps") -> list[float]:
    """'0.1,0.2,8/255,inf' -> [0.1, 0.2, 0.0313..., inf]; a bad value is a one-line error."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = parse_number(part)
        except (ValueError, ZeroDivisionError):
            raise RobustganError(f"{option}: {part!r} is not a number (use e.g. 0.1,0.2 or 8/255)") from None
        values.append(check_eps(value))
    if not values:
        raise RobustganError(f"{option}: give at least one value")
    return values


def parse_one_eps(text: str, option: str) -> float:
    """One bounded, non-zero eps (e.g. ``--eps-max 16/255``)."""
    value = parse_eps_list(text, option)[0]
    if value == 0 or math.isinf(value):
        raise RobustganError(f"{option} must be in (0, 1], got {text}")
    return value


def eps_grid(text: str, dataset: str, option: str = "--eps") -> list[float]:
    """The eps values given, or the paper's eps_i grid for the dataset."""
    return parse_eps_list(text, option) if text else grid_for(dataset)


def check_attack(attack: str) -> None:
    if attack not in ATTACK_NAMES:
        raise RobustganError(f"--attack must be one of {', '.join(ATTACK_NAMES)}; got {attack!r}")


def require(ok: bool, message: str) -> None:
    """A one-line error for an option value out of range."""
    if not ok:
        raise RobustganError(message)


def json_eps(eps: float):
    return "inf" if math.isinf(eps) else eps
