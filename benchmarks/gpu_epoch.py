"""PGD-7 adversarial training of PreAct ResNet-18 on CIFAR-10-sized data: images/s and
seconds per 50k-image epoch, with and without AMP / channels_last / compile, beside the
arithmetic limit (goal: an epoch in <= 5 s on an H200).

    python benchmarks/gpu_epoch.py                           # on a GPU: batches 128 and 512
    python benchmarks/gpu_epoch.py --batch 128 --steps 50 --peak-tflops 989
    python benchmarks/gpu_epoch.py --device cpu --quick      # a smoke run of the same path

Every variant runs `configs/pgd-at-cifar10.toml` (PGD-7, step 2/255, eps 8/255, SGD) through
`method.step` exactly as `robustgan train` does (same autocast, same fast-path switches),
on synthetic 32x32 RGB images held on the device; variants and repeats are interleaved.
FLOPs per image are counted op by op (2 per multiply-add; forward, input-gradient and
weight-gradient passes). The limit is 50,000 x FLOPs per image / the card's dense bf16
peak (``--peak-tflops``; 989 for H100 and H200 by name). Results: a markdown table on
stdout and benchmarks/gpu_epoch.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import Case, flops_per_image, measure  # noqa: E402 (benchmarks/ on the path first)

from robustgan.runtime import resolve_device  # noqa: E402

PRESET = "pgd-at-cifar10"
EPOCH_IMAGES = 50_000
DENSE_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # NVIDIA's dense (no sparsity) bf16 figures, SXM
VARIANTS = {
    "fp32": ("train.amp=off",),
    "bf16 autocast": ("train.amp=bf16",),
    "bf16, channels_last": ("train.amp=bf16", "train.channels_last=true"),
    "bf16, channels_last, compile": ("train.amp=bf16", "train.channels_last=true", "train.compile=true"),
}


def card_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in DENSE_BF16_TFLOPS.items() if key in name), None)


def run(device: torch.device, batches: list[int], steps: int, repeats: int, compile_: bool,
        peak_tflops: float | None, variants: dict | None = None) -> dict:
    flops = flops_per_image(Case(PRESET, PRESET), device, batch_size=4)  # linear in the batch size
    rows = []
    for batch in batches:
        cases = [Case(label, PRESET, overrides) for label, overrides in (variants or VARIANTS).items()
                 if compile_ or "train.compile=true" not in overrides]
        rates = measure(cases, steps, repeats, device, batch_size=batch)
        for label, r in rates.items():
            img_s = statistics.median(r)
            rows.append({"variant": label, "batch": batch, "img_s_min": min(r), "img_s_median": img_s,
                         "img_s_max": max(r), "epoch_s": EPOCH_IMAGES / img_s, "tflop_s": flops * img_s / 1e12})
    limit = EPOCH_IMAGES * flops / (peak_tflops * 1e12) if peak_tflops else None
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "preset": PRESET, "gflop_per_image": flops / 1e9,
            "peak_tflops": peak_tflops, "epoch_s_at_peak": limit, "steps": steps, "repeats": repeats, "rows": rows}


def report(result: dict) -> str:
    lines = [f"{result['device']}, torch {result['torch']}: PGD-7 AT step of PreAct ResNet-18 = "
             f"{result['gflop_per_image']:.1f} GFLOP per image ({result['gflop_per_image'] / 2:.1f} G multiply-adds)."]
    if result["epoch_s_at_peak"]:
        lines.append(f"At {result['peak_tflops']:.0f} TFLOP/s a 50k-image epoch needs at least "
                     f"{result['epoch_s_at_peak']:.2f} s.")
    lines += ["", "| variant | batch | img/s min | median | max | s per 50k epoch | TFLOP/s | of peak |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        share = f"{r['tflop_s'] / result['peak_tflops']:.0%}" if result["peak_tflops"] else "-"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['img_s_min']:.0f} | {r['img_s_median']:.0f} | "
                     f"{r['img_s_max']:.0f} | {r['epoch_s']:.1f} | {r['tflop_s']:.1f} | {share} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", default="128,512", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: by name)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 step, 1 repeat, no compile (smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "gpu_epoch.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.quick:
        args.batch, args.steps, args.repeats, args.no_compile = "4", 1, 1, True
    result = run(device, [int(b) for b in args.batch.split(",")], args.steps, args.repeats, not args.no_compile,
                 args.peak_tflops or card_peak(device))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(report(result))


if __name__ == "__main__":
    main()
