"""Training throughput of each method on the same data, interleaved in one process.

    python benchmarks/train_throughput.py            # digits presets, 10 steps x 3 repeats
    python benchmarks/train_throughput.py --steps 20 --repeats 5 pgd-at-digits atgan-digits

For each preset: images/s of `method.step` on batches of the preset's size (after two
warm-up steps), min / median / max over repeats, and the step-time ratio to PGD-AT.
Repeats are interleaved (A B C A B C ...) so background load affects all methods alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from robustgan import data
from robustgan.config import load_config
from robustgan.methods import method_class
from robustgan.train import geometry_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["standard-digits", "pgd-at-digits", "atgan-digits", "gan-at-digits-x", "gan-at-digits-xz",
           "gan-at-digits-grad", "gan-at-digits-gradx", "gan-at-digits-grad-dual"]


def measure(presets, steps: int, repeats: int, device=torch.device("cpu")) -> dict[str, list[float]]:
    """{preset: [images/s per repeat]}: ``steps`` timed steps after 2 warm-up steps,
    repeats interleaved across presets."""
    torch.manual_seed(0)
    x, y = data.load("digits", split="train")
    methods, batches = {}, {}
    for name in presets:
        cfg = load_config(ROOT / "configs" / f"{name}.toml")
        if hasattr(cfg.method, "ramp_epochs"):
            cfg.method.ramp_epochs = 0  # time the full-eps step
        methods[name] = method_class(cfg.method.name)(cfg, geometry_for(cfg.data), device)
        batcher = data.Batcher(x, y, cfg.train.batch_size, device=device, flip=cfg.data.flip, shift=cfg.data.shift)
        batches[name] = [b for _, b in zip(range(steps + 2), batcher)]
    rates = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            for xb, yb in batches[name][:2]:
                method.step(xb, yb)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for xb, yb in batches[name][2:]:
                method.step(xb, yb)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            images = sum(len(yb) for _, yb in batches[name][2:])
            rates[name].append(images / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = measure(args.presets, args.steps, args.repeats)
    base = statistics.median(rates["pgd-at-digits"]) if "pgd-at-digits" in rates else None
    print("| preset | img/s min | median | max | step time / PGD-AT |\n| --- | --- | --- | --- | --- |")
    for name, r in rates.items():
        ratio = f"{base / statistics.median(r):.2f}" if base else "-"
        print(f"| {name} | {min(r):.0f} | {statistics.median(r):.0f} | {max(r):.0f} | {ratio} |")
    print(f"\n{torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} repeats")


if __name__ == "__main__":
    main()
