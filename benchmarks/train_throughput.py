"""Training throughput of each method on the same data, interleaved in one process.

    python benchmarks/train_throughput.py            # digits presets, 10 steps x 3 repeats
    python benchmarks/train_throughput.py --steps 20 --repeats 5 pgd-at-digits atgan-digits
    python benchmarks/train_throughput.py --batch 16 --steps 2 pgd-at-cifar10 atgan-cifar10
    python benchmarks/train_throughput.py pgd-at-digits atgan-digits --variant train.amp=bf16

For each preset: images/s of `method.step` after two warm-up steps, min / median / max over
repeats interleaved across presets (A B C A B C ...) so background load affects all alike.
Each step runs as in `robustgan train`: inside the loop's autocast, with the preset's
`train.channels_last` / `train.compile` applied by the same function. Also the floating-point
operations of one step per image, counted op by op (convolutions and matrix products,
forward and backward), so a step-time ratio can be read against the arithmetic ratio:
the FLOP ratio is what an algorithm costs whatever the code, the time ratio what ours costs.
Digits presets train on digits; the others on synthetic images of the preset's size and
channels (nothing to download).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from robustgan import data
from robustgan.config import load_config
from robustgan.methods import method_class
from robustgan.runtime import apply_fast_paths, autocast_for, geometry_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["standard-digits", "pgd-at-digits", "atgan-digits", "gan-at-digits-x", "gan-at-digits-xz",
           "gan-at-digits-grad", "gan-at-digits-gradx", "gan-at-digits-grad-dual"]


@dataclass(frozen=True)
class Case:
    """One timed configuration: a preset plus dotted ``--set`` overrides, shown as ``label``."""

    label: str
    preset: str
    overrides: tuple[str, ...] = ()


class FlopCounter(TorchDispatchMode):
    """FLOPs of every op torch's flop registry knows (convolutions and matrix products,
    forward and backward; 2 per multiply-add). torch's own FlopCounterMode also installs
    module backward hooks, which ``torch.autograd.grad`` on a leaf input (each attack step)
    refuses; counting at the dispatcher needs no hooks."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def build(case: Case, device: torch.device, batch_size: int | None = None, batches: int = 4):
    """(method, [(x, y)] batches on the device, autocast context factory) for one case.
    ``method.ramp_epochs`` is set to 0 so every step runs at the full eps."""
    cfg = load_config(ROOT / "configs" / f"{case.preset}.toml", list(case.overrides))
    if hasattr(cfg.method, "ramp_epochs"):
        cfg.method.ramp_epochs = 0
    batch_size = batch_size or cfg.train.batch_size
    geometry = geometry_for(cfg.data)
    if cfg.data.name == "digits":
        x, y = data.load("digits", split="train")
    else:
        x, y = data.load("synthetic", split="train", n=batch_size * batches, image_size=geometry.image_size,
                         channels=geometry.channels, num_classes=geometry.num_classes)
    method = method_class(cfg.method.name)(cfg, geometry, device)
    apply_fast_paths(method, cfg)
    batcher = data.Batcher(x, y, batch_size, device=device, flip=cfg.data.flip, shift=cfg.data.shift,
                           channels_last=cfg.train.channels_last)
    return method, [b for _, b in zip(range(batches), batcher)], autocast_for(cfg.train.amp, device)


def flops_per_image(case: Case, device: torch.device, batch_size: int | None = None) -> float:
    """FLOPs of one ``method.step`` per image, on a fresh eager copy of the case (the count
    does not depend on memory format, compile or precision)."""
    eager = Case(case.label, case.preset, (*case.overrides, "train.compile=false"))
    method, batches, autocast = build(eager, device, batch_size, batches=1)
    x, y = batches[0]
    with FlopCounter() as counter, autocast():
        method.step(x, y)
    return counter.flops / len(y)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: list[Case], steps: int, repeats: int, device=torch.device("cpu"),
            batch_size: int | None = None) -> dict[str, list[float]]:
    """{label: [images/s per repeat]}: ``steps`` timed steps after 2 warm-up steps,
    repeats interleaved across cases."""
    torch.manual_seed(0)
    built = {case.label: build(case, device, batch_size, steps + 2) for case in cases}
    rates = {label: [] for label in built}
    for _ in range(repeats):
        for label, (method, batches, autocast) in built.items():
            for xb, yb in batches[:2]:
                with autocast():
                    method.step(xb, yb)
            sync(device)
            start = time.perf_counter()
            for xb, yb in batches[2:]:
                with autocast():
                    method.step(xb, yb)
            sync(device)
            rates[label].append(sum(len(yb) for _, yb in batches[2:]) / (time.perf_counter() - start))
    return rates


def baseline_for(preset: str) -> str:
    """The PGD-AT preset of the same dataset: the reference for step-time ratios."""
    return f"pgd-at-{load_config(ROOT / 'configs' / f'{preset}.toml').data.name}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, help="batch size for every preset (default: each preset's own)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also time every preset with these overrides (repeatable), e.g. train.amp=bf16")
    args = parser.parse_args()
    cases = [Case(p, p) for p in args.presets]
    cases += [Case(f"{p} [{v}]", p, tuple(v.split(","))) for v in args.variant for p in args.presets]
    rates = measure(cases, args.steps, args.repeats, batch_size=args.batch)
    # FLOPs do not depend on layout, precision or compile: one count per preset
    flops = {p: flops_per_image(Case(p, p), torch.device("cpu"), args.batch) for p in args.presets}
    print("| case | img/s min | median | max | GFLOP/img | step time / PGD-AT | FLOPs / PGD-AT | speed-up by the variant |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        r, plain, reference = rates[case.label], rates[case.preset], baseline_for(case.preset)
        base = case.label.replace(case.preset, reference, 1)  # PGD-AT with the same overrides
        time_ratio = f"{statistics.median(rates[base]) / statistics.median(r):.2f}" if base in rates else "-"
        flop_ratio = f"{flops[case.preset] / flops[reference]:.2f}" if reference in flops else "-"
        print(f"| {case.label} | {min(r):.0f} | {statistics.median(r):.0f} | {max(r):.0f} | "
              f"{flops[case.preset] / 1e9:.3f} | {time_ratio} | {flop_ratio} | "
              f"{statistics.median(r) / statistics.median(plain):.2f} |")
    print(f"\n{torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} repeats")


if __name__ == "__main__":
    main()
