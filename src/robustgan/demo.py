"""``robustgan demo``: train on the embedded digits and compare robustness.

For now: standard training vs PGD-AT, evaluated with PGD at three eps. ATGAN and GAN-AT
join when their methods land."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import robustgan
from robustgan.config import load_config
from robustgan.evaluate import robust_accuracy
from robustgan.train import fit, load_split

console = Console()
DEMO_EPS = (0.1, 0.2, 0.3)
# name -> (--set overrides); the digits presets, written out so the installed package needs no files
DEMO_RUNS = {
    "standard": ['method.name="standard"', "train.epochs=8"],
    "pgd_at": ['method.name="pgd_at"', "method.eps=0.2", "method.steps=7", "method.step_size=0.05",
               "method.ramp_epochs=3", "train.epochs=10"],
}
COMMON = ['data.name="digits"', 'model.name="cw_cnn"', "train.batch_size=64", "train.eval_eps=0.2"]


def run_demo(out: Path, quick: bool = False) -> dict:
    out = Path(out)
    results = {}
    for name, overrides in DEMO_RUNS.items():
        extra = ["train.epochs=1", "data.train_limit=256", "train.eval_limit=64"] if quick else []
        cfg = load_config(None, [*COMMON, *overrides, *extra])
        run_dir = out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        console.print(f"[bold]training {name}[/bold] -> {run_dir}")
        fit(cfg, run_dir, quiet=False)
        model = robustgan.load(run_dir)
        x, y = load_split(cfg.data, "test")
        if quick:
            x, y = x[:64], y[:64]
        torch.manual_seed(0)
        row = {"clean": robust_accuracy(model, x, y, attack="none")}
        for eps in DEMO_EPS:
            row[eps] = robust_accuracy(model, x, y, attack="pgd", eps=eps, steps=20 if not quick else 5)
        results[name] = row
    table = Table(title=f"digits test set (n={len(y)}), PGD-{20 if not quick else 5}")
    table.add_column("method")
    table.add_column("clean", justify="right")
    for eps in DEMO_EPS:
        table.add_column(f"PGD eps={eps}", justify="right")
    for name, row in results.items():
        table.add_row(name, *(f"{row[k]:.1%}" for k in ("clean", *DEMO_EPS)))
    console.print(table)
    console.print(f"runs written to {out}")
    return results
