"""The ensemble's APGD-CE loss: the cross-entropy of standardized logits (the default, invariant
to logits times a constant, log-softmax and softmax) against the raw cross-entropy, on the
digits presets at test size (tests/helpers.py), and the default on decision-keeping wrappers.

    python benchmarks/standardized_ce.py                  # trains the four presets (about 2 min at 2 threads)
    python benchmarks/standardized_ce.py --runs DIR ...   # or evaluates run directories you have

Gradient stage only (no Square), 50 steps, first 200 digits test images, eps 0.1 and 0.2, seed
0; prints a markdown table (docs/evaluation.md, "What keeps the decision").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import robustgan  # noqa: E402
from robustgan.attacks import AttackSettings, losses, worst_case  # noqa: E402
from tests.helpers import train_preset  # noqa: E402

PRESETS = ("pgd-at-digits", "atgan-digits", "trades-digits", "gan-at-digits-grad")
EXTRA = {"trades-digits": ["train.epochs=4", "method.steps=2", "method.step_size=0.15", "method.ramp_epochs=2"]}


def trained(root: Path) -> dict[str, Path]:
    """The four presets at test size (ATGAN's loss network: a standard run at test size)."""
    train_preset("standard-digits", root / "standard")
    runs = {}
    for name in PRESETS:
        extra = EXTRA.get(name, [])
        if name == "atgan-digits":
            extra = [f"method.loss_net_run={str(root / 'standard')!r}"]
        runs[name] = train_preset(name, root / name, *extra).path
    return runs


def accuracy(model, x, y, eps, loss) -> list[float]:
    saved = losses.LOSSES["ce-standardized"]
    losses.LOSSES["ce-standardized"] = losses.LOSSES[loss]  # the ensemble's APGD-CE runs on ``loss``
    try:
        return worst_case(model, x, y, eps, AttackSettings(steps=50, queries=0, seed=0)).accuracy
    finally:
        losses.LOSSES["ce-standardized"] = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", type=Path, help="run directories (default: train the presets)")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    x, y = robustgan.data.load("digits", split="test")
    x, y = x[:args.limit].float() / 255, y[:args.limit]
    eps = [0.1, 0.2]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {p.name: p for p in args.runs} if args.runs else trained(Path(tmp))
        print("| run | " + " | ".join(f"eps {e}: raw CE / standardized" for e in eps) + " |")
        print("| --- |" + " --- |" * len(eps))
        for name, run in runs.items():
            model = robustgan.load(run)
            raw, std = accuracy(model, x, y, eps, "ce"), accuracy(model, x, y, eps, "ce-standardized")
            print(f"| {name} | " + " | ".join(f"{100 * a:.1f} / {100 * b:.1f}" for a, b in zip(raw, std)) + " |",
                  flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
