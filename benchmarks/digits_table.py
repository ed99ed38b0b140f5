"""Train every digits preset (or the ones named) and tabulate clean / FGSM / PGD accuracy.

    python benchmarks/digits_table.py                      # all digits presets
    python benchmarks/digits_table.py pgd-at-digits atgan-digits --out runs/digits-table

Runs already finished in --out are reused. Prints a markdown table (accuracy on the 359
digits test images; PGD-40, step 0.01, one random start) with each run's training time,
and writes it to <out>/table.md and <out>/table.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import robustgan
from robustgan.config import load_config
from robustgan.attacks import AttackSettings
from robustgan.evaluation import robust_accuracy
from robustgan.runs import RunDir
from robustgan.train import fit

ROOT = Path(__file__).resolve().parent.parent
EPS = (0.1, 0.2, 0.3)


def evaluate(run: Path) -> dict:
    model = robustgan.load(run)
    x, y = robustgan.data.load("digits", split="test")
    torch.manual_seed(0)
    row = {"clean": robust_accuracy(model, x, y, 0.0, AttackSettings("none"))}
    for eps in EPS:
        row[f"fgsm {eps}"] = robust_accuracy(model, x, y, eps, AttackSettings("fgsm"))
    for eps in EPS:
        row[f"pgd {eps}"] = robust_accuracy(model, x, y, eps, AttackSettings("pgd", steps=40, step_size=0.01))
    records = [r for r in RunDir(run).metrics() if r.get("split") == "train"]
    row["train_seconds"] = sum(r.get("epoch_seconds", 0.0) for r in records)
    row["epochs"] = len(records)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="preset names (default: every *digits*.toml in configs/)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "digits-table"))
    args = parser.parse_args()
    presets = args.presets or sorted(p.stem for p in (ROOT / "configs").glob("*digits*.toml"))
    out = Path(args.out)
    rows = {}
    for name in presets:
        run = out / name
        if not RunDir(run).is_complete:
            start = time.perf_counter()
            fit(load_config(ROOT / "configs" / f"{name}.toml"), run, quiet=True,
                resume=RunDir(run).has_checkpoint)
            print(f"trained {name} in {time.perf_counter() - start:.0f} s (wall, incl. evaluations)", flush=True)
        rows[name] = evaluate(run)
    keys = ["clean", *[f"fgsm {e}" for e in EPS], *[f"pgd {e}" for e in EPS]]
    lines = ["| preset | epochs | train s | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 3)]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['epochs']} | {row['train_seconds']:.0f} | "
                     + " | ".join(f"{100 * row[k]:.1f}" for k in keys) + " |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
