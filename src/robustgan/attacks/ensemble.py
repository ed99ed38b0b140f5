"""The worst-case ensemble: robustgan's default evaluation (issue 15, docs/evaluation.md).

For each eps in ascending order and each test point still classified correctly: APGD-CE,
then targeted APGD-DLR towards the point's ``targets`` most likely other classes (APGD-T,
Croce & Hein 2020 Sec. 4), each attack only on the points every earlier attack failed on,
each point keeping its worst case (the first misclassified example, else the one with the
largest margin max_{i != y} z_i - z_y). As in AutoAttack, a point counts as robust only if
every attack fails on it.

Two savings that change cost, not results:
- monotonicity: a point fooled at eps_k is fooled at every larger eps (the same example lies
  in the larger ball), so only still-robust points are attacked at the next eps;
- warm start: those points start from their worst point at the previous eps (inside the
  larger ball) instead of from a random one.
Both can be turned off (``warm_start``, ``early_stop``) to check that claim."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run, margin
from robustgan.attacks.threat import AttackError, attack_mode, check_eps

ATTACK_VERSION = 3  # bump whenever an attack's numbers change: part of every evaluation cache key


@dataclass
class WorstCase:
    """Per-sample results of the ensemble: ``correct[i, k]`` says test point i withstood
    every attack at ``eps[k]`` (ascending); accuracies, curves and paired statistics all
    come from this one matrix."""

    eps: list[float]
    correct: torch.Tensor  # (n, len(eps)) bool, on the CPU
    clean: torch.Tensor  # (n,) bool
    attacks: list[str]
    grad_evals: int  # forward-backward passes, summed over points and attacks
    seconds: float
    examples: torch.Tensor | None = None  # (len(eps), n, C, H, W): each point's worst example, on request

    @property
    def accuracy(self) -> list[float]:
        return self.correct.float().mean(0).tolist() if len(self.clean) else [0.0] * len(self.eps)

    def min_eps(self) -> torch.Tensor:
        """Each point's smallest eps of the grid at which it is fooled (0 when the clean image
        is already misclassified, inf when never): accuracy(eps) = P(min_eps > eps)."""
        grid = torch.tensor([0.0, *self.eps, math.inf])
        table = torch.cat([self.clean[:, None], self.correct, torch.zeros(len(self.clean), 1, dtype=torch.bool)], 1)
        return grid[(~table).float().argmax(1)]


def ensemble_names(targets: int) -> list[str]:
    return ["apgd-ce"] + ([f"apgd-t({targets} targets)"] if targets else [])


def _attack_robust(model, x, y, ids, eps, fooled, worst, worst_margin, runs, steps, restarts, warm_start,
                   early_stop) -> int:
    """Every attack of ``runs`` in turn on the points not yet ``fooled`` (all points without
    early stop), at ``eps`` (a number or one per point); updates ``fooled``, ``worst`` and
    ``worst_margin`` in place and returns the gradient evaluations spent."""
    grad_evals = 0
    for loss, rank, seed in runs:
        idx = (~fooled).nonzero()[:, 0] if early_stop else torch.arange(len(y), device=y.device)
        if not len(idx):
            break
        got = apgd_run(model, x[idx], y[idx], eps[idx] if isinstance(eps, torch.Tensor) else eps, steps=steps,
                       loss=loss, target_rank=rank, restarts=restarts, seed=seed, ids=ids[idx.cpu()],
                       early_stop=early_stop, x_init=worst[idx] if warm_start else None)
        grad_evals += got.grad_evals
        with torch.no_grad():
            got_margin = margin(model(got.x_adv).float(), y[idx])
        was = fooled[idx]
        better = ~was & (got.fooled | (got_margin > worst_margin[idx]))
        worst[idx[better]], worst_margin[idx[better]] = got.x_adv[better], got_margin[better]
        fooled[idx] = was | got.fooled
    return grad_evals


def batches(x, y, batch_size, device):
    """(slice, float images in [0, 1] on device, labels on device) per batch of the set."""
    for lo in range(0, len(y), batch_size):
        sl = slice(lo, lo + batch_size)
        xb, yb = x[sl].to(device), y[sl].to(device)
        yield sl, (xb.float().div(255) if xb.dtype == torch.uint8 else xb), yb


def attack_runs(targets: int, seed: int) -> list[tuple]:
    """(loss, target rank, seed) of each attack: APGD-CE, then APGD-T per target rank."""
    return [("ce", None, seed)] + [("dlr-targeted", r, seed + 7919 * r) for r in range(1, int(targets) + 1)]


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], *, steps: int = 100,
               targets: int = 3, restarts: int = 1, seed: int = 0, warm_start: bool = True, early_stop: bool = True,
               keep_examples: bool = False, batch_size: int = 256, device="cpu", ids: torch.Tensor | None = None,
               known_fooled: torch.Tensor | None = None, progress=None, task=None) -> WorstCase:
    """Run the ensemble on x (uint8 or float in [0, 1]) at every eps of ``eps`` (sorted here).

    ``ids`` are the points' indices in the test set (their random starts are drawn from
    them, so a shard or a batch gets what one process would); ``known_fooled`` (n, len(eps))
    marks points already known to be fooled at an eps (from cached smaller eps): they are
    not attacked there. ``progress`` / ``task`` advance by points per eps."""
    start = time.perf_counter()
    eps = sorted(check_eps(e) for e in eps)
    if int(steps) <= 0 or int(targets) < 0 or int(restarts) <= 0:
        raise AttackError(f"steps and restarts must be positive and targets >= 0, got {steps}, {targets}, {restarts}")
    if keep_examples and known_fooled is not None:
        raise AttackError("keep_examples needs every eps attacked (no known_fooled)")
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    correct = torch.zeros(len(y), len(eps), dtype=torch.bool)
    clean = torch.zeros(len(y), dtype=torch.bool)
    examples = torch.empty(len(eps), *x.shape, dtype=torch.float32) if keep_examples else None
    grad_evals = 0
    runs = attack_runs(targets, seed)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batch_size, device):
            with torch.no_grad():
                logits = model(xb).float()
            fooled = logits.argmax(1) != yb
            clean[sl] = ~fooled.cpu()
            worst, worst_margin = xb.clone(), margin(logits, yb)
            for k, e in enumerate(eps):
                if known_fooled is not None:
                    fooled |= known_fooled[sl, k].to(device)
                if e > 0:
                    grad_evals += _attack_robust(model, xb, yb, ids[sl], e, fooled, worst, worst_margin, runs,
                                                 steps, restarts, warm_start, early_stop)
                correct[sl, k] = ~fooled.cpu()
                if keep_examples:
                    examples[k, sl] = worst.cpu()
                if progress is not None:
                    progress.advance(task, len(yb))
    return WorstCase(eps, correct, clean, ensemble_names(int(targets)), grad_evals, time.perf_counter() - start,
                     examples)


def refine_min_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, found: WorstCase, *, rounds: int = 4,
                   steps: int = 100, targets: int = 3, seed: int = 0, batch_size: int = 256, device="cpu",
                   ids: torch.Tensor | None = None, progress=None, task=None) -> torch.Tensor:
    """Each point's smallest fooling eps, narrowed by bisection between the largest grid eps
    it withstood and the smallest that fooled it (``rounds`` halvings of that gap, the
    ensemble at each midpoint): an upper bound on the point's minimal adversarial L-inf
    norm, within gap / 2**rounds of the best this ensemble finds. inf where never fooled."""
    upper = found.min_eps().clone()
    grid = torch.tensor([0.0, *found.eps])
    lower = grid[(grid[None, :] < upper[:, None]).sum(1) - 1].clamp(min=0)  # the largest grid eps below it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    runs = attack_runs(targets, seed)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batch_size, device):
            low, high = lower[sl].to(device), upper[sl].to(device)
            open_gap = (high > 0) & torch.isfinite(high)
            for _ in range(int(rounds)):
                mid = (low + high) / 2
                fooled = ~open_gap.clone()
                with torch.no_grad():
                    worst_margin = margin(model(xb).float(), yb)
                _attack_robust(model, xb, yb, ids[sl], mid, fooled, xb.clone(), worst_margin, runs, steps, 1,
                               False, True)
                high = torch.where(open_gap & fooled, mid, high)
                low = torch.where(open_gap & ~fooled, mid, low)
            upper[sl] = high.cpu()
            if progress is not None:
                progress.advance(task, len(yb))
    return upper
