"""`make bench`: attack and training throughput against peers, FLOPs, peak memory, demo time.

    python benchmarks/run.py                 # everything (about 13 minutes on 2 CPU cores)
    python benchmarks/run.py --quick         # fewer repeats; no memory, CIFAR-10 or demo
    python benchmarks/run.py --only attacks  # or: training, demo
    python benchmarks/run.py --only eval     # benchmarks/eval_engine.py (hours; not part of everything)

Attacks: our PGD / FGSM against torchattacks' (and ART's, where installed) on the same
model, data, eps, steps and step size, interleaved in one process (ours, theirs, ours,
theirs...), so background load hits both alike. Reported: throughput ratio peer time /
our time per repeat, min / median / max. "ours, channels_last" is the same attack on a
channels_last copy of the model and data (`robustgan eval --channels-last`, and
`train.channels_last=true` for training). Beside them, the model floor: the forward and
input-gradient passes alone, which bound what any attack can gain over a peer. Each
implementation's memory: the peak one call adds, in its own subprocess.

Training: images/s of `method.step` on the same batches for standard, PGD-AT, ATGAN and
GAN-AT (digits presets, C&W CNN, PGD-7 where there is PGD; then the CIFAR-10 presets on
synthetic 32x32 images), repeats interleaved across methods in this process; FLOPs per
image counted op by op; each method's peak memory (max RSS on CPU, max allocated on
CUDA) in its own subprocess.

Results: a markdown report on stdout and benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from robustgan.attacks.threat import attack_mode, loss_and_grad
from robustgan.runtime import resolve_device

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_throughput import Case, baseline_for, build, flops_per_image, measure, sync  # noqa: E402 (benchmarks/ on the path first)

TRAIN_PRESETS = ["standard-digits", "pgd-at-digits", "atgan-digits", "gan-at-digits-grad"]
CIFAR_PRESETS = ["standard-cifar10", "pgd-at-cifar10", "atgan-cifar10"]
CPU_CIFAR_BATCH = 16
# Memory children: glibc serves every block >= 64 KiB with its own mmap and returns it on
# free, so RSS follows live tensors (otherwise freed blocks stay resident and the peaks of
# repeated runs scatter by +-30 MB); one arena for the same reason. Timing runs keep defaults.
MEMORY_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}


# ------------------------------------------------------------------ attacks
def attack_cases(quick: bool):
    """(label, model name, channels, size, batch, attack, steps)."""
    cases = [("C&W CNN, 28x28, batch 256", "cw_cnn", 1, 28, 256, "pgd", 10),
             ("C&W CNN, 28x28, batch 256", "cw_cnn", 1, 28, 256, "fgsm", 1),
             ("PreAct ResNet-18, 32x32, batch 64", "preact_resnet18", 3, 32, 64, "pgd", 5)]
    if not quick:
        cases.append(("PreAct ResNet-18, 32x32, batch 64", "preact_resnet18", 3, 32, 64, "fgsm", 1))
    return cases


def peers(model, attack: str, eps: float, steps: int, alpha: float, channels: int, size: int):
    """{name: fn(x, y) -> x_adv} for the installed peer libraries."""
    found = {}
    try:
        import torchattacks

        found["torchattacks"] = (torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
                                 if attack == "pgd" else torchattacks.FGSM(model, eps=eps))
    except ImportError:
        pass
    try:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(channels, size, size),
                                       nb_classes=10, clip_values=(0.0, 1.0), device_type="gpu"
                                       if next(model.parameters()).is_cuda else "cpu")
        art_attack = (ProjectedGradientDescentPyTorch(classifier, eps=eps, eps_step=alpha, max_iter=steps,
                                                      num_random_init=1, batch_size=1 << 16, verbose=False)
                      if attack == "pgd" else FastGradientMethod(classifier, eps=eps, batch_size=1 << 16))

        def run_art(x, y):  # ART works on numpy arrays: the copies are part of its cost
            return torch.from_numpy(art_attack.generate(x.cpu().numpy(), y.cpu().numpy()))

        found["ART"] = run_art
    except ImportError:
        pass
    return found


def model_floor(model, x, y, steps: int) -> None:
    """The work no attack can skip: ``steps`` forward passes and input-gradient backward
    passes of the model with the float32 loss (no random start, sign, step or projection).
    On the same model and layout an attack is at most peer time / floor time faster than a
    peer, whatever it does."""
    with attack_mode(model):
        x_adv = x.detach().clone().requires_grad_(True)
        for _ in range(steps):
            loss_and_grad(model, x_adv, y)


def attack_runs(case, device: torch.device) -> dict:
    """{implementation: fn()} for one case: ours and ours in channels_last, the installed
    peers, and the model floor in both layouts (``floor/ours``, ``floor/ours, channels_last``)."""
    from robustgan import models
    from robustgan.attacks import fgsm, pgd

    _, name, channels, size, batch, attack, steps = case
    torch.manual_seed(0)
    model = models.build(name, 10, channels, image_size=size).to(device).eval()
    model_cl = models.build(name, 10, channels, image_size=size).to(device).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    x = torch.rand(batch, channels, size, size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    eps, alpha = 8 / 255, 2 / 255
    ours = {"ours": (lambda: pgd(model, x, y, eps, steps, alpha)) if attack == "pgd" else
            (lambda: fgsm(model, x, y, eps)),
            "ours, channels_last": (lambda: pgd(model_cl, x_cl, y, eps, steps, alpha)) if attack == "pgd" else
            (lambda: fgsm(model_cl, x_cl, y, eps))}
    others = {k: (lambda f=f: f(x, y)) for k, f in peers(model, attack, eps, steps, alpha, channels, size).items()}
    floors = {"floor/ours": lambda: model_floor(model, x, y, steps),
              "floor/ours, channels_last": lambda: model_floor(model_cl, x_cl, y, steps)}
    return {**ours, **others, **floors}


def bench_attacks(device: torch.device, repeats: int, quick: bool) -> tuple[list[dict], list[dict]]:
    """Speed-ups over the peers and overheads over the model floor; each implementation's
    own peak memory (one subprocess per case and implementation) unless ``quick``."""
    rows, floor_rows = [], []
    for index, case in enumerate(attack_cases(quick)):
        label, batch, attack, steps = case[0], case[4], case[5], case[6]
        runs = attack_runs(case, device)
        ours = [k for k in runs if k.startswith("ours")]
        others = [k for k in runs if not k.startswith(("ours", "floor/"))]
        attack_label = f"PGD-{steps}" if attack == "pgd" else "FGSM"
        times = {k: [] for k in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(repeats):
            for key, fn in runs.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[key].append(time.perf_counter() - start)
        memory = {} if quick else {k: attack_memory(index, k, device) for k in ours + others}
        for peer in others:
            for variant in ours:
                ratios = [t / o for t, o in zip(times[peer], times[variant])]
                rows.append({"case": label, "attack": attack_label,
                             "ours": variant, "peer": peer, "ours_img_s": batch / statistics.median(times[variant]),
                             "peer_img_s": batch / statistics.median(times[peer]), "ratio_min": min(ratios),
                             "ratio_median": statistics.median(ratios), "ratio_max": max(ratios),
                             "ours_mb": memory.get(variant), "peer_mb": memory.get(peer)})
        for variant in ours:
            floor = statistics.median(times[f"floor/{variant}"])
            floor_rows.append({"case": label, "attack": attack_label, "layout": variant.removeprefix("ours, ")
                               .replace("ours", "contiguous"), "floor_img_s": batch / floor,
                               "ours_overhead": statistics.median(times[variant]) / floor - 1,
                               **{f"{peer}_overhead": statistics.median(times[peer]) / floor - 1 for peer in others}})
        print(f"  {label} {attack}: done", file=sys.stderr)
    return rows, floor_rows


def attack_memory(index: int, implementation: str, device: torch.device) -> float:
    """MB one attack call adds to the process's peak, run alone in a subprocess."""
    done = subprocess.run([sys.executable, __file__, "--attack-child", str(index), implementation,
                           "--device", str(device)], capture_output=True, text=True, check=True, env=MEMORY_ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])["attack_mb"]


def attack_child(index: int, implementation: str, device_name: str) -> None:
    """One call of one attack after everything else is built: print the peak memory it adds
    (on CPU, VmHWM after minus VmRSS before, the high-water mark reset first so building the
    models does not count; on CUDA, max allocated minus allocated)."""
    device = resolve_device(device_name)
    run = attack_runs(attack_cases(False)[index], device)[implementation]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        before = proc_status("VmRSS")
    run()
    sync(device)
    after = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    print(json.dumps({"attack_mb": (after - before) / 2**20}))


# ------------------------------------------------------------------ training (one subprocess per measurement)
def proc_status(key: str) -> int:
    """A byte count from /proc/self/status (VmRSS, VmHWM...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not ru_maxrss: Linux carries
    ru_maxrss over exec, so a child forked from a big parent would report the parent's."""
    try:
        return proc_status("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_child(preset: str, steps: int, device_name: str, batch_size: int | None) -> None:
    """Peak memory of ``steps`` + 2 steps of one preset, alone in this process; print JSON."""
    device = resolve_device(device_name)
    torch.manual_seed(0)
    method, batches, autocast = build(Case(preset, preset), device, batch_size, steps + 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for xb, yb in batches:
        with autocast():
            method.step(xb, yb)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    print(json.dumps({"preset": preset, "peak_mb": peak / 2**20,
                      "memory": "cuda max allocated" if device.type == "cuda" else "max RSS"}))


def bench_training(device_name: str, steps: int, repeats: int, quick: bool) -> list[dict]:
    """Throughput in this process, repeats interleaved across methods (ratios need that:
    a fresh process runs its first steps slower, which biased an earlier per-process
    measurement of the ATGAN / PGD-AT ratio down from 2.1 to 1.45); FLOPs per image counted
    op by op; peak memory in one subprocess per method, so each peak is its own. Then the
    CIFAR-10 pair (PreAct ResNet-18 D, the paper's CIFAR-10 G) on synthetic 32x32 images,
    where Algorithm 1's cost relative to PGD-AT is set."""
    device = resolve_device(device_name)
    groups = [(TRAIN_PRESETS, None, steps)]
    if not quick:  # ResNet-18 steps take seconds on a CPU: a small batch, few steps
        groups.append((CIFAR_PRESETS, None if device.type == "cuda" else CPU_CIFAR_BATCH, 2))
    rows = []
    for presets, batch_size, n_steps in groups:
        rates = measure([Case(p, p) for p in presets], n_steps, repeats, device, batch_size)
        flops = {p: flops_per_image(Case(p, p), device, batch_size) for p in presets}
        for preset in presets:
            extra = ["--batch", str(batch_size)] if batch_size else []
            done = subprocess.run([sys.executable, __file__, "--child", preset, "--steps", str(n_steps),
                                   "--device", device_name, *extra], capture_output=True, text=True, check=True,
                                  env=MEMORY_ENV)
            peak = json.loads(done.stdout.strip().splitlines()[-1])
            r, reference = rates[preset], baseline_for(preset)
            rows.append({"preset": preset, "batch": batch_size or "preset", "img_s_min": min(r),
                         "img_s_median": statistics.median(r), "img_s_max": max(r),
                         "step_time_vs_pgd_at": statistics.median(rates[reference]) / statistics.median(r),
                         "gflop_per_image": flops[preset] / 1e9, "flops_vs_pgd_at": flops[preset] / flops[reference],
                         "gflop_s": flops[preset] * statistics.median(r) / 1e9,
                         "peak_mb": peak["peak_mb"], "memory": peak["memory"]})
    return rows


# ------------------------------------------------------------------ demo
def bench_demo() -> dict:
    """Wall time and peak memory of `robustgan demo`, alone in a subprocess."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--demo-child", f"{tmp}/demo"], check=True,
                              capture_output=True, text=True)
        return {"demo_seconds": time.perf_counter() - start,
                "demo_peak_mb": json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]}


def demo_child(out: str) -> None:
    from robustgan.demo import run_demo

    run_demo(Path(out))
    print(json.dumps({"peak_mb": peak_rss() / 2**20}))


# ------------------------------------------------------------------ report
def report(results: dict) -> str:
    lines = [f"Machine: {results['machine']}", ""]
    if results.get("attacks"):
        lines += ["| case | attack | ours | peer | ours img/s | peer img/s | speed-up min | median | max "
                  "| ours MB | peer MB |", "| --- " * 11 + "|"]
        mb = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731 (--quick measures no memory)
        for r in results["attacks"]:
            lines.append(f"| {r['case']} | {r['attack']} | {r['ours']} | {r['peer']} | {r['ours_img_s']:.0f} | "
                         f"{r['peer_img_s']:.0f} | {r['ratio_min']:.2f} | {r['ratio_median']:.2f} | "
                         f"{r['ratio_max']:.2f} | {mb(r['ours_mb'])} | {mb(r['peer_mb'])} |")
        lines.append("")
    if results.get("attack_floor"):
        peer_names = [k.removesuffix("_overhead") for k in results["attack_floor"][0]
                      if k.endswith("_overhead") and k != "ours_overhead"]
        lines += ["| case | attack | layout | model floor img/s | ours over floor | "
                  + " | ".join(f"{p} over floor | most any attack can gain over {p}" for p in peer_names) + " |",
                  "| --- " * (5 + 2 * len(peer_names)) + "|"]
        for r in results["attack_floor"]:
            cells = " | ".join(f"{r[p + '_overhead']:+.0%} | {1 + r[p + '_overhead']:.2f}x" for p in peer_names)
            lines.append(f"| {r['case']} | {r['attack']} | {r['layout']} | {r['floor_img_s']:.0f} | "
                         f"{r['ours_overhead']:+.0%} | {cells} |")
        lines.append("")
    if results.get("training"):
        lines += ["| preset | batch | img/s min | median | max | step time / PGD-AT | GFLOP/img | FLOPs / PGD-AT "
                  "| GFLOP/s | peak memory (MB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["training"]:
            lines.append(f"| {r['preset']} | {r['batch']} | {r['img_s_min']:.0f} | {r['img_s_median']:.0f} | "
                         f"{r['img_s_max']:.0f} | {r['step_time_vs_pgd_at']:.2f} | {r['gflop_per_image']:.2f} | "
                         f"{r['flops_vs_pgd_at']:.2f} | {r['gflop_s']:.0f} | {r['peak_mb']:.0f} ({r['memory']}) |")
        lines.append("")
    if results.get("demo"):
        lines.append(f"`robustgan demo`: {results['demo']['demo_seconds']:.0f} s wall, peak memory "
                     f"{results['demo']['demo_peak_mb']:.0f} MB (max RSS)")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return (f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; Python "
            f"{platform.python_version()}; {platform.processor() or platform.machine()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["attacks", "training", "demo", "eval"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--attack-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--demo-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.demo_child:
        return demo_child(args.demo_child)
    if args.attack_child:
        return attack_child(int(args.attack_child[0]), args.attack_child[1], args.device)
    if args.child:
        return train_child(args.child, args.steps, args.device, args.batch)
    if args.only == "eval":  # its own report and benchmarks/results_eval.json
        from eval_engine import main as eval_main

        return eval_main(["--device", args.device] + (["--quick"] if args.quick else []))
    device = resolve_device(args.device)
    results = {"machine": machine(device), "date": time.strftime("%Y-%m-%d")}
    if args.only in (None, "attacks"):
        results["attacks"], results["attack_floor"] = bench_attacks(device, 3 if args.quick else 5, args.quick)
    if args.only in (None, "training"):
        results["training"] = bench_training(args.device, args.steps, 2 if args.quick else 3, args.quick)
    if args.only == "demo" or (args.only is None and not args.quick):
        results["demo"] = bench_demo()
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=1))
    print(report(results))


if __name__ == "__main__":
    main()
