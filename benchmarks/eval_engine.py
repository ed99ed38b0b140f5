"""The worst-case evaluation engine against torchattacks' APGD-CE + APGD-T, Foolbox's
PGD and our PGD-40, on trained digits models: as strong, and cheaper per accuracy curve.

    python benchmarks/eval_engine.py             # both digits presets, 359 images, 3 repeats (hours on 2 CPU cores)
    python benchmarks/eval_engine.py --quick --limit 24 --repeats 1 --aa-limit 0 --eps 0.1,0.3   # smoke test, ~2 min
    python benchmarks/run.py --only eval         # the same as the first (--quick passes through)
    python benchmarks/eval_engine.py --presets atgan-digits --limit 200 --repeats 1 --aa-limit 200 \
        --aa-eps 0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5 --curves ""   # ours against AutoAttack alone
    python benchmarks/eval_engine.py --against-aa pgd-at-digits,tiny,tiny-threshold --limit 200 \
        --eps 0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5 --single 0.2   # the cost table, CR beside
    python benchmarks/eval_engine.py --against-aa pgd-at-l2-digits,tiny,tiny-threshold --norm l2 --limit 200 \
        --eps 0.5,1,1.5,2,2.5,3 --single 2   # the same in L2, against standard AutoAttack in L2

``--against-aa``: on each named model (benchmarks/ensemble_savings.py's: the digits presets, the
tests' tiny PGD-AT CNN and its planted wrappers), the default over the curve and at each
``--single`` eps alone, and the CR attack (``--attack cr``) at every eps, against standard
AutoAttack at every eps (benchmarks/aa_reference.py: run once per model, images and eps, then
read from runs/aa-reference). Per model: accuracy per eps, the points AutoAttack fools that ours
leaves robust, backward and forward passes per point and seconds, over the curve and at each
single eps, with AutoAttack's passes over each. Added to benchmarks/results_against_aa.json (per model).

Models: configs/pgd-at-digits.toml and configs/atgan-digits.toml, trained into --runs (default
runs/bench-eval) or reused where <runs>/<preset>/DONE exists. ``--quick`` trains short
versions (2 epochs) into runs/bench-eval-quick instead: a smoke test, not a
result. The attack settings are the same in both modes.

Curves, each over the whole eps grid (default the digits grid 0.1..0.5), same model and images:
- ours: one ``worst_case`` call with its defaults (APGD-CE, then APGD-T towards up to 9 target
  classes ranked at each point's worst example, ranks 2-9 only on points close to fooled, side
  by side with successive halving, 100 steps, ascending eps with warm start and early stop;
  then the Square stage, 5000 queries, on the points every gradient attack left robust);
- ours-gradients: the same without the Square stage (``queries=0``): the curve to set beside the
  APGD-CE + APGD-T chains, which run no gradient-free attack;
- torchattacks 3.5.1: APGD-CE (100 steps) then APGD-T (100 steps, all 9 target classes, its
  only setting) on the points APGD-CE left correct, as AutoAttack chains them, once per eps;
- adv_lib 0.2.8 (the strongest L-inf implementations in the AttackBench study, Cina et al.
  2024): the same chain with its ``apgd`` (CE) and ``apgd_targeted`` (DLR, 9 targets), once per
  eps (only if adv_lib imports; `make bench` installs it);
- Foolbox 3 LinfPGD, 40 steps of 2.5 eps / 40 with a random start, all eps in one call (only
  if foolbox imports; `make bench` installs it);
- our PGD-40 (``robust_mask``, step 2.5 eps / 40, one seeded random start), once per eps:
  the papers' protocol.
``--curves`` picks the curves beside ours (default all five).

Strength: robust accuracy per eps from those curves (repeats are checked to agree), and
standard AutoAttack as published (APGD-CE and APGD-T 100 steps, FAB-T, Square 5000;
``robustgan.attacks.autoattack``) on the first --aa-limit images at --aa-eps, point by point.
Goals: ours never more than 0.5 point above torchattacks' or adv_lib's APGD-CE + APGD-T or above
AutoAttack at any eps; at least 5x fewer seconds, gradient evaluations and forwards than
AutoAttack over the grid (when --aa-eps is the whole grid). For that comparison ours runs again
on AutoAttack's images, right before and right after it, and its seconds are the mean of the
two: a host that speeds up or slows down during AutoAttack's minutes moves both sides.

Cost: the curves in interleaved repeats (ours, ours-gradients, torchattacks, adv_lib, foolbox,
pgd40, ours...), so
background load hits all alike; no warm-up run (one curve takes seconds to minutes). Seconds
min / median / max, time / ours per repeat, and gradient evaluations and forwards per test
point, counted the same way for everyone: the model is wrapped so that every forward pass adds
its batch size to the forwards, and one whose input requires grad (one followed by an input
gradient: a backward pass) to the gradient evaluations. Goal: ours-gradients at least 3x
faster than torchattacks' chain per curve (ours, where --curves leaves ours-gradients out).

Results: a markdown report on stdout and benchmarks/results_eval.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import robustgan
from robustgan.attacks import AttackSettings, Batching
from robustgan.attacks.accuracy import robust_mask
from robustgan.attacks.ensemble import worst_case
from robustgan.config import load_config
from robustgan.eps import format_eps, grid_for, parse_number
from robustgan.runtime import resolve_device
from robustgan.train import ensure_trained

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from peer_curves import adv_lib_attacks, adv_lib_curve, foolbox_curve, predicts, torchattacks_curve  # noqa: E402
from run import machine  # noqa: E402 (benchmarks/ on the path first)

PRESETS = ["pgd-at-digits", "atgan-digits"]
PEERS = ["ours-gradients", "torchattacks", "adv_lib", "foolbox", "pgd40"]
QUICK = ["train.epochs=2"]  # plus method.loss_net_epochs=1 where the method has one: about 80 s of training
GOAL_POINTS = 0.5  # ours may be at most this many accuracy points above torchattacks at any eps
GOAL_SPEEDUP = 3.0  # ours-gradients at least this many times faster than torchattacks per curve
VERDICT = {True: "met", False: "NOT met", None: "-"}  # a goal's verdict; None: not measured
GOAL_AA_SAVING = 5.0  # ours at least this many times fewer seconds, grad evals and forwards than AutoAttack (grid)


class GradCounter(nn.Module):
    """The model, counting the test points of every forward pass (``forwards``) and of those
    followed by an input gradient (``count``: grad enabled and the input requires grad; one
    backward pass each): the same counts for every library."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.count, self.forwards = model, 0, 0

    def reset(self) -> None:
        self.count = self.forwards = 0

    def forward(self, x):
        self.forwards += len(x)
        if torch.is_grad_enabled() and x.requires_grad:
            self.count += len(x)
        return self.model(x)


# ------------------------------------------------------------------ models
def trained_run(preset: str, runs: Path, quick: bool) -> Path:
    """The finished run of ``preset`` in ``runs``: reused when done, else trained (or resumed)."""
    path = ROOT / "configs" / f"{preset}.toml"
    cfg = load_config(path)
    if quick:
        cfg = load_config(path, QUICK + (["method.loss_net_epochs=1"] if hasattr(cfg.method, "loss_net_epochs")
                                         else []))
    out = runs / preset
    if not (out / "DONE").is_file():
        start = time.perf_counter()
        ensure_trained(cfg, out, quiet=True)
        print(f"  trained {preset} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------ curves: fn() -> correct (n, len(eps)) bool
def curves(model, x: torch.Tensor, y: torch.Tensor, eps: list[float], device, found: dict) -> dict:
    """{implementation: fn() -> correct (n, len(eps)) bool}; x uint8 on the CPU. Ours also
    leaves its WorstCase in ``found["ours"]`` (for its own count of gradient evaluations)."""
    xf, yd = x.to(device).float().div(255), y.to(device)  # (N, C, H, W) in [0, 1], for the peers

    def ours():
        found["ours"] = worst_case(model, x, y, eps, AttackSettings(), Batching(device=device))
        return found["ours"].correct

    runs = {"ours": ours,
            "ours-gradients": lambda: worst_case(model, x, y, eps, AttackSettings(queries=0), Batching(device)).correct,
            "torchattacks": lambda: torchattacks_curve(model, xf, yd, eps)}
    try:
        adv_lib_attacks()
        runs["adv_lib"] = lambda: adv_lib_curve(model, xf, yd, eps)
    except ImportError:
        pass
    try:
        import foolbox  # noqa: F401

        runs["foolbox"] = lambda: foolbox_curve(model, xf, yd, eps)
    except ImportError:
        pass
    runs["pgd40"] = lambda: torch.stack([robust_mask(model, x, y, e, AttackSettings("pgd", steps=40), Batching(device))
                                         for e in eps], 1)
    return runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(counter: GradCounter, runs: dict, repeats: int, device) -> tuple[dict, dict, dict, dict, dict]:
    """Interleaved repeats: (seconds per repeat, grad evals, forwards, the first repeat's
    correct matrix, whether every repeat gave the same one), each keyed by implementation."""
    times, evals, forwards, correct, same = {k: [] for k in runs}, {}, {}, {}, {k: True for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            torch.manual_seed(0)  # foolbox's random start (the others seed themselves)
            counter.reset()
            sync(device)
            start = time.perf_counter()
            got = fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            evals[name], forwards[name] = counter.count, counter.forwards
            same[name] &= torch.equal(correct.setdefault(name, got), got)
            print(f"    {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    return times, evals, forwards, correct, same


def autoattack_subset(counter: GradCounter, x: torch.Tensor, y: torch.Tensor, eps: list[float], device,
                      grid: list[float] | None) -> tuple[dict, list]:
    """({eps: (correct (n,) bool, seconds, grad evals, forwards)} under standard AutoAttack as
    published (100 iterations; torchattacks' own AutoAttack runs 10): robustgan.attacks.autoattack;
    and, with a ``grid``, [(seconds, grad evals, forwards)] of our default on the same images over
    it, timed right before and right after AutoAttack, so that a host that speeds up or slows
    down meanwhile moves both sides)."""
    from robustgan.attacks import autoattack

    xf, yd = x.to(device).float().div(255), y.to(device)
    found, ours = {}, []

    def time_ours():
        counter.reset()
        sync(device)
        start = time.perf_counter()
        worst_case(counter, x, y, grid, AttackSettings(), Batching(device=device))
        sync(device)
        ours.append((time.perf_counter() - start, counter.count, counter.forwards))
        print(f"    ours on the AutoAttack images: {ours[-1][0]:.1f} s", file=sys.stderr, flush=True)

    if grid:
        time_ours()
    for e in eps:
        counter.reset()
        start = time.perf_counter()
        correct = predicts(counter.model, autoattack(counter, xf, yd, e, num_classes=10), yd)
        found[e] = (correct, time.perf_counter() - start, counter.count, counter.forwards)
        print(f"    autoattack eps {e:g}: {found[e][1]:.0f} s", file=sys.stderr, flush=True)
    if grid:
        time_ours()
    return found, ours


def aa_saving(strength: list[dict], ours: list, aa_n: int) -> dict:
    """AutoAttack's cost over the eps it ran (``strength``'s rows) and, where it ran on the whole
    grid (``ours`` measured), ours' on the same images and the ratios: seconds against the mean
    of ours' two runs, grad evals and forwards per point."""
    rows = [r for r in strength if "autoattack_subset" in r]
    cost = {"eps": [r["eps"] for r in rows], "seconds": sum(r["autoattack_seconds"] for r in rows),
            "grad_evals_per_point": sum(r["autoattack_grad_evals"] for r in rows) / max(1, aa_n),
            "forwards_per_point": sum(r["autoattack_forwards"] for r in rows) / max(1, aa_n),
            "whole_grid": bool(ours)}
    if ours:
        cost["ours_seconds"] = [t for t, _, _ in ours]
        cost["ours_grad_evals_per_point"], cost["ours_forwards_per_point"] = (v / aa_n for v in ours[0][1:])
        cost["ratios"] = {"seconds": cost["seconds"] / statistics.mean(cost["ours_seconds"]),
                          "grad_evals": cost["grad_evals_per_point"] / cost["ours_grad_evals_per_point"],
                          "forwards": cost["forwards_per_point"] / cost["ours_forwards_per_point"]}
    return cost


# ------------------------------------------------------------------ one preset
def bench_preset(run: Path, args, eps: list[float], device) -> dict:
    model = robustgan.load(run).to(device)
    counter = GradCounter(model).eval()
    x, y = robustgan.data.load("digits", split="test")
    x, y = x[:args.limit or None], y[:args.limit or None]
    n = len(y)
    found = {}
    runs = {k: fn for k, fn in curves(counter, x, y, eps, device, found).items() if k == "ours" or k in args.curves}
    times, evals, forwards, correct, same = measure(counter, runs, args.repeats, device)
    clean = predicts(model, x.to(device).float().div(255), y.to(device)).float().mean().item()

    aa_eps = [e for e in eps if any(abs(e - a) < 1e-9 for a in args.aa_eps)] if args.aa_limit else []
    whole_grid = len(aa_eps) == len(eps)  # only then are ours' seconds over the grid comparable
    aa, aa_ours = (autoattack_subset(counter, x[:args.aa_limit], y[:args.aa_limit], aa_eps, device,
                                     eps if whole_grid else None) if aa_eps else ({}, []))
    acc = {k: (100 * c.float().mean(0)).tolist() for k, c in correct.items()}
    peers = [k for k in ("torchattacks", "adv_lib") if k in correct]
    strength = []
    for j, e in enumerate(eps):
        ours = correct["ours"][:, j]
        row = {"eps": e, "ours": acc["ours"][j], **{k: acc[k][j] if k in acc else None for k in
                                                     ("torchattacks", "adv_lib", "pgd40")},
               "foolbox_pgd40": acc["foolbox"][j] if "foolbox" in acc else None}
        if peers:
            theirs = torch.stack([correct[k][:, j] for k in peers]).all(0)  # robust under every peer
            row |= {"ours_minus_theirs": max(acc["ours"][j] - acc[k][j] for k in peers),
                    "fooled_by_theirs_only": int((ours & ~theirs).sum()),
                    "fooled_by_ours_only": int((~ours & theirs).sum())}
        if e in aa:
            mine, theirs_aa = ours[:args.aa_limit], aa[e][0].cpu()
            row |= {"autoattack_subset": 100 * theirs_aa.float().mean().item(), "autoattack_seconds": aa[e][1],
                    "autoattack_grad_evals": aa[e][2], "autoattack_forwards": aa[e][3],
                    "ours_on_subset": 100 * mine.float().mean().item(),
                    "fooled_by_autoattack_only": int((mine & ~theirs_aa).sum())}
        strength.append(row)
    cost = []
    for name in times:
        ratios = [t / o for t, o in zip(times[name], times["ours"])]
        cost.append({"implementation": name, "seconds_min": min(times[name]),
                     "seconds_median": statistics.median(times[name]), "seconds_max": max(times[name]),
                     "vs_ours_min": min(ratios), "vs_ours_median": statistics.median(ratios),
                     "vs_ours_max": max(ratios), "grad_evals_per_point": evals[name] / n,
                     "forwards_per_point": forwards[name] / n, "repeats_agree": same[name]})
    base = "ours-gradients" if "ours-gradients" in times else "ours"  # the chains run no gradient-free attack
    speedups = {k: statistics.median(t / o for t, o in zip(times[k], times[base]))
                for k in ("torchattacks", "adv_lib") if k in times}  # per chain, median over repeats
    aa_n = min(args.aa_limit, n)
    aa_cost = aa_saving(strength, aa_ours, aa_n)
    return {"n": n, "clean": 100 * clean, "aa_n": aa_n, "strength": strength, "cost": cost,
            "ours_own_grad_evals_per_point": found["ours"].grad_evals / n, "autoattack_cost": aa_cost,
            "strength_goal_met": all(r["ours_minus_theirs"] <= GOAL_POINTS for r in strength) if peers else None,
            "aa_strength_goal_met": all(r["ours_on_subset"] - r["autoattack_subset"] <= GOAL_POINTS
                                        for r in strength if "autoattack_subset" in r) if aa else None,
            "aa_saving_goal_met": min(aa_cost["ratios"].values()) >= GOAL_AA_SAVING if aa_ours else None,
            "speedups": speedups, "speedup_base": base,
            "speed_goal_met": speedups["torchattacks"] >= GOAL_SPEEDUP if "torchattacks" in speedups else None}


# ------------------------------------------------------------------ against AutoAttack, per model
def cr_correct(counted, x, y, eps: list[float], norm: str = "linf") -> torch.Tensor:
    """(n, len(eps)) correct under the CR attack (``--attack cr``) in ``norm``, one eps at a time."""
    from robustgan.attacks.cr import cr_attack

    xf = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    columns = []
    for e in eps:
        x_adv, _ = cr_attack(counted, xf, y, e, norm=norm)
        columns.append(predicts(counted.model, x_adv, y))  # scored uncounted, as AutoAttack's examples are
    return torch.stack(columns, 1)


def passes(counted, fn) -> tuple[torch.Tensor, int, int, float]:
    """(fn()'s result, backward passes, forward passes, seconds) with ``counted``'s counts."""
    counted.forwards = counted.backwards = 0
    start = time.perf_counter()
    got = fn()
    return got, counted.backwards, counted.forwards, time.perf_counter() - start


def against_autoattack(name: str, model: nn.Module, x, y, grid: list[float], single: list[float],
                       norm: str = "linf", variants: tuple[str, ...] = ()) -> dict:
    """The default (over the grid, and at each eps of ``single`` alone) and the CR attack against
    standard AutoAttack (``aa_reference``: run once per model, images and eps, then cached) on
    ``model``, all in ``norm``: accuracy per eps, backward and forward passes per point, seconds.
    ``variants``: names of ``ensemble_savings.SAVINGS``, each run over the grid as well (the
    trade-off between passes and points above AutoAttack)."""
    from aa_reference import Counted, reference
    from ensemble_savings import SAVINGS

    counted, n = Counted(model).eval(), len(y)
    default = AttackSettings(norm=norm)
    aa = reference(name, model, x, y, sorted(set(grid) | set(single)), norm=norm)
    ours, back, fwd, sec = passes(counted, lambda: worst_case(counted, x, y, grid, default).correct)
    cr, cr_back, cr_fwd, cr_sec = passes(counted, lambda: cr_correct(counted, x, y, grid, norm))
    row = {"n": n, "norm": norm, "grid": grid, "aa": [100 * aa[e]["correct"].float().mean().item() for e in grid],
           "ours": (100 * ours.float().mean(0)).tolist(), "cr": (100 * cr.float().mean(0)).tolist(),
           "fooled_by_aa_only": [int((ours[:, k] & ~aa[e]["correct"]).sum()) for k, e in enumerate(grid)],
           "curve": {"aa": [sum(aa[e][k] for e in grid) / n for k in ("backward", "forward")] +
                     [sum(aa[e]["seconds"] for e in grid)],
                     "ours": [back / n, fwd / n, sec], "cr": [cr_back / n, cr_fwd / n, cr_sec]}, "single": {}}
    row["variants"] = {}
    for v in variants:
        got, b, f, s = passes(counted, lambda: worst_case(counted, x, y, grid, default, savings=SAVINGS[v]).correct)
        row["variants"][v] = {"ours": (100 * got.float().mean(0)).tolist(), "curve": [b / n, f / n, s],
                              "fooled_by_aa_only": [int((got[:, k] & ~aa[e]["correct"]).sum())
                                                    for k, e in enumerate(grid)]}
    for e in single:
        alone, b, f, s = passes(counted, lambda: worst_case(counted, x, y, [e], default).correct[:, 0])
        cr_alone, cb, cf, cs = passes(counted, lambda: cr_correct(counted, x, y, [e], norm)[:, 0])
        row["single"][e] = {"aa": 100 * aa[e]["correct"].float().mean().item(), "ours": 100 * alone.float().mean().item(),
                            "cr": 100 * cr_alone.float().mean().item(),
                            "fooled_by_aa_only": int((alone & ~aa[e]["correct"]).sum()),
                            "cost": {"aa": [aa[e]["backward"] / n, aa[e]["forward"] / n, aa[e]["seconds"]],
                                     "ours": [b / n, f / n, s], "cr": [cb / n, cf / n, cs]}}
    return row


def aa_table(results: dict) -> str:
    """The report of ``against_autoattack`` for every model."""
    lines = []
    for name, r in results.items():
        grid = r["grid"]
        unit = "" if r.get("norm", "linf") == "linf" else f", {r['norm'].upper()} radii"
        lines += [f"### {name}: first {r['n']} digits test images{unit}", "",
                  "| attack | " + " | ".join(format_eps(e) for e in grid) + " |", "| --- " * (len(grid) + 1) + "|"]
        for key, label in (("aa", "standard AutoAttack"), ("ours", "ours (default, the curve)"), ("cr", "CR")):
            lines.append(f"| {label} | " + " | ".join(f"{a:.1f}" for a in r[key]) + " |")
        lines.append("| fooled by AutoAttack only | " + " | ".join(map(str, r["fooled_by_aa_only"])) + " |")
        lines += ["", "| what | attack | backward / pt | forward / pt | seconds | AutoAttack / it: backward | forward |",
                  "| --- " * 7 + "|"]
        aa = r["curve"]["aa"]
        for key, label in (("aa", "AutoAttack"), ("ours", "ours"), ("cr", "CR")):
            c = r["curve"][key]
            lines.append(f"| the curve | {label} | {c[0]:.0f} | {c[1]:.0f} | {c[2]:.0f} | {aa[0] / c[0]:.1f}x | "
                         f"{aa[1] / c[1]:.1f}x |")
        for e, s in r["single"].items():
            aa = s["cost"]["aa"]
            for key, label in (("aa", "AutoAttack"), ("ours", "ours"), ("cr", "CR")):
                c = s["cost"][key]
                lines.append(f"| eps {format_eps(float(e))} alone ({s[key]:.1f}%) | {label} | {c[0]:.0f} | {c[1]:.0f} | "
                             f"{c[2]:.0f} | {aa[0] / c[0]:.1f}x | {aa[1] / c[1]:.1f}x |")
        if r.get("variants"):
            aa = r["curve"]["aa"]
            lines += ["", "| savings (the curve) | most above AutoAttack at one eps (points) | at every eps | "
                      "backward / pt | forward / pt | seconds | AutoAttack / it: backward | forward |", "| --- " * 8 + "|"]
            for v, c in {"default": {**r, "curve": r["curve"]["ours"]}, **r["variants"]}.items():
                above = [round(o - a, 1) + 0.0 for o, a in zip(c["ours"], r["aa"])]  # + 0.0: no "-0.0"
                worst = max(round(d * r["n"] / 100) for d in above)
                b, f, s = c["curve"]
                lines.append(f"| {v} | {worst:+d} | {' / '.join(f'{d:+.1f}' for d in above)} | {b:.0f} | {f:.0f} | "
                             f"{s:.0f} | {aa[0] / b:.1f}x | {aa[1] / f:.1f}x |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ report
def aa_paragraph(r: dict) -> str:
    """The report's lines on AutoAttack: its cost, ours' on the same images, both goals."""
    aa = r["autoattack_cost"]
    text = (f"AutoAttack at eps {', '.join(format_eps(e) for e in aa['eps'])} on the first {r['aa_n']} images: "
            f"{aa['seconds']:.0f} s, {aa['grad_evals_per_point']:.0f} grad evals and {aa['forwards_per_point']:.0f} "
            f"forwards per point. Strength goal (ours at most {GOAL_POINTS} point above AutoAttack at each of those "
            f"eps): {VERDICT[r['aa_strength_goal_met']]}. ")
    if not aa["whole_grid"]:
        return text + "Saving goal: not measured (AutoAttack did not run on every eps of the grid)."
    (before, after), ratios = aa["ours_seconds"], aa["ratios"]
    return text + (f"Ours on the same images over the grid, timed right before and right after it: {before:.1f} s "
                   f"and {after:.1f} s, {aa['ours_grad_evals_per_point']:.0f} grad evals and "
                   f"{aa['ours_forwards_per_point']:.0f} forwards per point (AutoAttack / ours: "
                   f"{ratios['seconds']:.1f}x seconds, against the mean of the two; {ratios['grad_evals']:.1f}x grad "
                   f"evals, {ratios['forwards']:.1f}x forwards). Saving goal (at least {GOAL_AA_SAVING:g}x fewer "
                   f"seconds, grad evals and forwards over the whole grid): {VERDICT[r['aa_saving_goal_met']]}.")


def report(results: dict) -> str:
    lines = [f"Machine: {results['machine']}", ""]
    cell = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731 (not measured)
    for preset, r in results["presets"].items():
        aa_n = r["aa_n"]
        lines += [f"### {preset}: {r['n']} test images, clean accuracy {r['clean']:.1f}%", "",
                  ("| eps | ours ensemble | torchattacks APGD-CE+APGD-T | adv_lib APGD-CE+APGD-T | ours - peers "
                   "(points, worst) | fooled by a peer only / ours only | PGD-40 | Foolbox PGD-40 | AutoAttack (first "
                   f"{aa_n}) | ours on those {aa_n} | fooled by AutoAttack only |"), "| --- " * 11 + "|"]
        for s in r["strength"]:
            versus = (f"{s['ours_minus_theirs']:+.1f} | {s['fooled_by_theirs_only']} / {s['fooled_by_ours_only']}"
                      if "ours_minus_theirs" in s else "- | -")
            lines.append(f"| {format_eps(s['eps'])} | {s['ours']:.1f} | {cell(s['torchattacks'])} | "
                         f"{cell(s['adv_lib'])} | {versus} | {cell(s['pgd40'])} | {cell(s['foolbox_pgd40'])} | "
                         f"{cell(s.get('autoattack_subset'))} | {cell(s.get('ours_on_subset'))} | "
                         f"{s.get('fooled_by_autoattack_only', '-')} |")
        if r["strength_goal_met"] is not None:
            worst = max(s["ours_minus_theirs"] for s in r["strength"])
            lines += ["", (f"Strength goal (ours at most {GOAL_POINTS} point above each peer at every eps): "
                           f"{VERDICT[r['strength_goal_met']]} (worst {worst:+.1f})")]
        lines += ["", ("| curve | seconds min | median | max | time / ours min | median | max | grad evals per point "
                       "| forwards per point | repeats agree |"), "| --- " * 10 + "|"]
        for c in r["cost"]:
            lines.append(f"| {c['implementation']} | {c['seconds_min']:.1f} | {c['seconds_median']:.1f} | "
                         f"{c['seconds_max']:.1f} | {c['vs_ours_min']:.2f} | {c['vs_ours_median']:.2f} | "
                         f"{c['vs_ours_max']:.2f} | {c['grad_evals_per_point']:.0f} | {c['forwards_per_point']:.0f} | "
                         f"{'yes' if c['repeats_agree'] else 'NO'} |")
        if r["speedups"]:
            versus = "; ".join(f"{k} / {r['speedup_base']} {v:.2f}x" for k, v in r["speedups"].items())
            lines += ["", (f"Speed goal ({r['speedup_base']} at least {GOAL_SPEEDUP:g}x faster than torchattacks' "
                           f"APGD-CE + APGD-T per curve, median): {VERDICT[r['speed_goal_met']]} ({versus}).")]
        lines += ["", ("Ours counts "
                       f"{r['ours_own_grad_evals_per_point']:.0f} grad evals per point itself. A forward is one point "
                       "through the model, a grad eval one point through a forward pass and an input gradient."), ""]
        if r["autoattack_cost"]["eps"]:
            lines += [aa_paragraph(r), ""]
    for peer in ("foolbox", "adv_lib"):
        if not results[peer]:
            lines.append(f"{peer}: not installed (it installs with `make bench`), skipped.")
    return "\n".join(lines)


def curve_names(text: str) -> list[str]:
    """--curves: comma-separated names of PEERS ("" for none)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown curve {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    return names


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--runs", help="where the runs are trained or reused (default runs/bench-eval, "
                                       "runs/bench-eval-quick with --quick)")
    parser.add_argument("--limit", type=int, default=0, help="test images (0 = all 359)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=lambda s: [parse_number(v) for v in s.split(",")], default=grid_for("digits"))
    parser.add_argument("--aa-limit", type=int, default=100, help="images for AutoAttack (0 = skip it)")
    parser.add_argument("--aa-eps", type=lambda s: [parse_number(v) for v in s.split(",")], default=[0.2, 0.3],
                        help="eps of the grid where AutoAttack runs")
    parser.add_argument("--curves", type=curve_names, default=PEERS,
                        help=f"the curves beside ours, comma-separated (default {','.join(PEERS)}; those whose "
                             "library is not installed are skipped)")
    parser.add_argument("--quick", action="store_true", help="short training runs (a smoke test)")
    parser.add_argument("--against-aa", metavar="MODELS",
                        help="instead of the peers' curves: the default and the CR attack against standard "
                             "AutoAttack (cached in runs/aa-reference) on these models of "
                             "benchmarks/ensemble_savings.py (e.g. pgd-at-digits,atgan-digits,tiny,tiny-threshold), "
                             "over --eps and at each --single eps alone; --limit images (default 200)")
    parser.add_argument("--single", type=lambda s: [parse_number(v) for v in s.split(",")], default=[0.2],
                        help="with --against-aa: the eps evaluated alone (default 0.2)")
    parser.add_argument("--variants", default="", metavar="NAMES",
                        help="with --against-aa: also run these savings of benchmarks/ensemble_savings.py's SAVINGS "
                             "over the curve (comma-separated): passes against points above AutoAttack")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"),
                        help="with --against-aa: the threat model of every attack and of --eps")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.against_aa:
        from ensemble_savings import SAVINGS, models

        unknown = set(filter(None, args.variants.split(","))) - SAVINGS.keys()
        if unknown:
            parser.error(f"--variants: no savings named {', '.join(sorted(unknown))}; known: {', '.join(SAVINGS)}")
        x, y = robustgan.data.load("digits", split="test")
        x, y = x[:args.limit or 200], y[:args.limit or 200]
        found = {}
        for name, model in models(args.against_aa.split(",")).items():
            print(f"  {name}", file=sys.stderr, flush=True)
            key = name if args.norm == "linf" else f"{name} ({args.norm})"
            found[key] = against_autoattack(name, model, x, y, sorted(args.eps), args.single, args.norm,
                                            tuple(filter(None, args.variants.split(","))))
            print(aa_table({key: found[key]}), flush=True)
        out = ROOT / "benchmarks" / "results_against_aa.json"  # per model: a run adds or replaces its models
        kept = json.loads(out.read_text()) if out.is_file() else {}
        out.write_text(json.dumps(kept | found, indent=1))
        return
    runs = Path(args.runs or ROOT / "runs" / ("bench-eval-quick" if args.quick else "bench-eval"))
    eps = sorted(args.eps)
    try:
        import foolbox
    except ImportError:
        foolbox = None
    try:
        import adv_lib
    except ImportError:
        adv_lib = None
    import torchattacks

    results = {"machine": f"{machine(device)}; torchattacks {torchattacks.__version__}"
                          + (f", foolbox {foolbox.__version__}" if foolbox else "")
                          + (f", adv_lib {adv_lib.__version__}" if adv_lib else ""),
               "date": time.strftime("%Y-%m-%d"), "args": {**vars(args), "eps": eps, "runs": str(runs)},
               "foolbox": foolbox is not None, "adv_lib": adv_lib is not None, "presets": {}}
    for preset in args.presets:
        print(f"  {preset}", file=sys.stderr, flush=True)
        results["presets"][preset] = bench_preset(trained_run(preset, runs, args.quick), args, eps, device)
        (ROOT / "benchmarks" / "results_eval.json").write_text(json.dumps(results, indent=1))  # after each preset
        print(report({**results, "presets": {preset: results["presets"][preset]}}), flush=True)


if __name__ == "__main__":
    main()
