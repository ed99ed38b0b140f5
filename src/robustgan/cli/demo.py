"""The main job: demo."""

from __future__ import annotations

from pathlib import Path

import typer

from robustgan.cli.common import writable
from robustgan.demo import run_demo


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", metavar="PATH", help="Where the demo's runs go"),
    quick: bool = typer.Option(False, "--quick", help="A reduced version for smoke tests"),
):
    """The main job: train standard, PGD-AT, ATGAN, GAN-AT, FGSM-RS and TRADES on the embedded
    digits, run the robustness curves and gradient-masking checks, write <out>/report.html, a
    summary and the frontier (robustness at eps 0.2 against training cost, <out>/frontier.png).

    Examples:

      robustgan demo

      robustgan demo --quick --out /tmp/demo
    """
    writable(out, folder=True)
    run_demo(out, quick=quick)
