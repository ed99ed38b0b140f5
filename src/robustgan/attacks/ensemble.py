"""The worst-case ensemble: robustgan's default evaluation (docs/evaluation.md).

For each eps in ascending order and each test point still classified correctly: APGD-CE,
then targeted APGD-DLR towards up to ``targets`` (default 9) other classes (APGD-T, Croce &
Hein 2020 Sec. 4), each attack only on the points every earlier attack failed on, each point
keeping its worst case (the first misclassified example, else the one with the largest
margin max_{i != y} z_i - z_y). Then the query stages on the points every gradient attack
left robust: Square (``gradient_free``), and RayS (``rays``) on points whose outputs carry only the
decision (``outputs.decisions_only``). As in AutoAttack, a point counts as robust only if every
attack fails on it.

Where it departs from AutoAttack's APGD-T (our reading of A3, Liu et al. CVPR 2022: spend the
attack where it can still succeed):
- targets are ranked at the point's worst example after APGD-CE, where the attack has got
  to, instead of at the clean image, so the likeliest targets come first;
- rank 1 (``FIRST_TARGETS``) attacks every still-robust point; ranks 2-9 only the points
  ``close_to_fooled``: whose worst example has closed at least 70% of the clean logit gap
  (margin ratio < ``CLOSE``; invariant to scaling the logits);
- ranks 2-9 attack a point side by side, one batch row per target, and share its budget by
  successive halving (Jamieson & Talwalkar 2016; ``HALVING``): all 8 run to APGD's first
  checkpoint (22 of 100 steps), the 4 with the highest targeted loss to the second (41), 2 to
  the third (57), 1 to the end; a point fooled by one target stops the others. One batch
  instead of eight keeps the CPU or GPU busy on a handful of close points. Without halving
  (``Savings(halving=False)``) these are the runs of ranks 2-9 one after another (same targets, same
  random starts, the same points fooled);
- each targeted run starts, as in AutoAttack, from a random point of the ball; and since
  APGD-CE's warm start (below) can trap a point that a fresh start fools, the points that have
  closed half their gap (``CLOSE_RESTART``) get APGD-CE once more from its random start.
The thresholds were set on the digits PGD-AT and ATGAN presets (docs/evaluation.md has the
measurements): a model whose fooled points stay far from the boundary until the last step may
need ``Savings(close=1, halving=False)`` (every target on every point, all its steps).

What keeps the decision cannot move the result (docs/evaluation.md): APGD-CE's loss is the
cross-entropy of standardized logits (``losses.standardized``) and APGD-T's is DLR, both
invariant to scaling the logits and to shifting each point's; the gating and the worst-case
choice compare margins only by sign and ratio; Square's margins only by order, and its give-up
rule by their ratio to the clean margin; and a model whose outputs are probabilities is
attacked through their logarithm (``LogProbabilities``).
So logits times any constant k > 0, their log-softmax or their softmax give the unwrapped model's
result, up to float rounding.

Two savings that change cost, not results:
- monotonicity: a point fooled at eps_k is fooled at every larger eps (the same example lies
  in the larger ball), so only still-robust points are attacked at the next eps;
- warm start: APGD-CE on those points starts from their worst point at the previous eps
  (inside the larger ball) instead of from a random one.
Both can be turned off (``Savings(warm_start=False, early_stop=False)``) to check that claim."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run, margin, target_order
from robustgan.attacks.registry import QUERIES_PER_STEP, AttackArgs, register_attack
from robustgan.attacks.gradient_free import gradient_free_stage
from robustgan.attacks.outputs import as_logits, decisions_only
from robustgan.attacks.rays import decision_stage
from robustgan.attacks.threat import AttackError, attack_mode, check_eps, classifier, model_device, probe_classes

DEFAULT_TARGETS = 9  # APGD-T towards up to 9 classes, as AutoAttack's APGD-T
FIRST_TARGETS = 1  # APGD-T target ranks every still-robust point gets; higher ranks only close points
CLOSE = 0.3  # close to fooled: the worst example has closed 70% of the clean logit gap

CLOSE_RESTART = 0.5  # close enough for a second APGD-CE from a random start: half the gap closed
HALVING = (4, 2, 1)  # targets 2-9 kept per point after APGD's first three checkpoints (22, 41, 57 of 100 steps)


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
    forwards: int = 0  # forward passes without a gradient: the gradient-free stage's queries
    gradients_correct: torch.Tensor | None = None  # (n, len(eps)): ``correct`` before the gradient-free stage
    decisions_only: torch.Tensor | None = None  # (n,) bool: clean outputs carry only the decision (``decisions_only``)

    @property
    def accuracy(self) -> list[float]:
        return self.correct.float().mean(0).tolist() if len(self.clean) else [0.0] * len(self.eps)

    def min_eps(self) -> torch.Tensor:
        """Each point's smallest eps of the grid at which it is fooled (0 when the clean image
        is already misclassified, inf when never): accuracy(eps) = P(min_eps > eps)."""
        grid = torch.tensor([0.0, *self.eps, math.inf])
        table = torch.cat([self.clean[:, None], self.correct, torch.zeros(len(self.clean), 1, dtype=torch.bool)], 1)
        return grid[(~table).float().argmax(1)]


def ensemble_names(targets: int, queries: int = 0, label_only: bool = False) -> list[str]:
    """What the ensemble runs: APGD-CE, APGD-T with ``targets`` (none: left out), Square and, on
    points whose outputs carry only the decision (``label_only``), RayS, each with ``queries``."""
    return (["apgd-ce"] + ([f"apgd-t({targets} targets)"] if targets else [])
            + ([f"square({queries})"] if queries else []) + ([f"rays({queries})"] if queries and label_only else []))


class AttackRun(NamedTuple):
    loss: str  # a key of losses.LOSSES
    ranks: tuple[int, ...]  # targets by rank at the worst example, attacked side by side (targeted loss only)
    seed: int  # target rank r draws its random starts from seed + 7919 r
    threshold: float | None  # only on points ``close_to_fooled`` at this threshold; None: every point
    warm: bool  # start from each point's worst example instead of a random point
    prune: tuple[int, ...] | None = None  # successive halving over a point's targets (``apgd_run``)


@dataclass(frozen=True)
class Savings:
    """Where the ensemble spends less than attacking every point with everything (module
    docstring), each switchable off to measure what it saves: ``warm_start`` (APGD-CE from the
    worst point at the previous eps, and once more from a random start on close points),
    ``early_stop`` (a fooled point is not attacked again), ``close`` (ranks 2-9 only on points
    whose margin ratio is at most ``close``; 1: every point), ``halving`` (successive halving
    over those ranks)."""

    warm_start: bool = True
    early_stop: bool = True
    close: float = CLOSE
    halving: bool = True


def close_to_fooled(worst_margin: torch.Tensor, clean_margin: torch.Tensor, close: float) -> torch.Tensor:
    """Points whose worst example has closed all but ``close`` of the clean logit gap:
    worst margin / clean margin <= close, both negative on a correct point (the ratio is
    invariant to scaling the logits; close=1 takes every point). Clean-misclassified points
    count as close."""
    return (clean_margin >= 0) | (worst_margin >= close * clean_margin)


def _attack_robust(model, x, y, ids, eps, fooled, worst, worst_margin, clean_margin, runs, steps, restarts,
                   early_stop, max_rows) -> int:
    """Every attack of ``runs`` (``attack_runs``) in turn on the points not yet ``fooled`` (all
    points without early stop), the adaptive ones only on the points ``close_to_fooled``, at
    ``eps`` (a number or one per point); updates ``fooled``, ``worst`` and ``worst_margin`` in
    place and returns the gradient evaluations spent. APGD-T's targets are ranked at each
    point's worst example after the first attack (where the attack has got to); a run with
    several target ranks attacks each point towards all of them side by side, one row per
    (rank, point), at most ``max_rows`` rows per call (but one point's ranks always in one
    call), and keeps each point's worst row."""
    grad_evals = 0
    order = None
    for run in runs:
        todo = ~fooled if early_stop else torch.ones_like(fooled)
        if run.threshold is not None:
            todo &= close_to_fooled(worst_margin, clean_margin, run.threshold)
        if run.ranks and order is None:
            with torch.no_grad():
                order = target_order(model(worst).float(), y)
        # as AutoAttack: at most (classes - 1) targets; the last column of ``order`` is the true class
        ranks = torch.tensor([r for r in run.ranks if r < order.shape[1]] if run.ranks else [], dtype=torch.long)
        idx = todo.nonzero()[:, 0]
        if not len(idx) or (run.ranks and not len(ranks)):
            continue
        per_call = max(1, max_rows // max(len(ranks), 1))
        for part in idx.split(per_call):
            got_x, got_fooled, got_margin, evals = _attack_side_by_side(model, x, y, ids, eps, worst, order, part,
                                                                        ranks, run, steps, restarts, early_stop)
            grad_evals += evals
            was = fooled[part]
            better = ~was & (got_fooled | (got_margin > worst_margin[part]))
            worst[part[better]], worst_margin[part[better]] = got_x[better], got_margin[better]
            fooled[part] = was | got_fooled
    return grad_evals


def _attack_side_by_side(model, x, y, ids, eps, worst, order, idx, ranks, run, steps, restarts, early_stop):
    """``run`` on the points ``idx`` towards every target rank of ``ranks`` at once (none:
    untargeted), in one ``apgd_run`` call: each point's worst row (fooled, else the largest
    margin), whether it was fooled, its margin, and the gradient evaluations spent."""
    copies = max(len(ranks), 1)
    rows = idx.repeat(copies)  # rank-major: row j * len(idx) + i attacks point idx[i] towards ranks[j]
    rank = ranks.repeat_interleave(len(idx))
    got = apgd_run(model, x[rows], y[rows], eps[rows] if isinstance(eps, torch.Tensor) else eps, steps=steps,
                   loss=run.loss, target=order[rows, rank.to(rows.device) - 1] if len(ranks) else None,
                   restarts=restarts, seed=run.seed + 7919 * rank if len(ranks) else run.seed, ids=ids[rows.cpu()],
                   early_stop=early_stop, x_init=worst[rows] if run.warm else None,
                   groups=rows if copies > 1 else None, prune=run.prune if copies > 1 else None)
    with torch.no_grad():
        got_margin = margin(model(got.x_adv).float(), y[rows])
    pick = torch.where(got.fooled, math.inf, got_margin).view(copies, -1).argmax(0) * len(idx)
    pick += torch.arange(len(idx), device=pick.device)
    return got.x_adv[pick], got.fooled[pick], got_margin[pick], got.grad_evals


def batches(x, y, batch_size, device):
    """(slice, float32 images in [0, 1] on device, labels on device) per batch of the set."""
    for lo in range(0, len(y), batch_size):
        sl = slice(lo, lo + batch_size)
        xb, yb = x[sl].to(device), y[sl].to(device)
        yield sl, (xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()), yb


def usable_targets(targets: int, classes: int) -> int:
    """APGD-T's targets on a ``classes``-way model: at most classes - 1 (as AutoAttack), and none
    below 4 classes, where the targeted DLR loss (Croce & Hein 2020, eq. 6 in its targeted form,
    Sec. 4) reads the fourth-largest logit."""
    return min(int(targets), classes - 1) if classes >= 4 else 0


def attack_runs(targets: int, seed: int, savings: Savings = Savings(warm_start=False)) -> list[AttackRun]:
    """Each attack of the ensemble in order: APGD-CE (from the worst point so far with
    ``savings.warm_start``); APGD-T towards the first ``FIRST_TARGETS`` target ranks on every
    point, then towards the other ranks side by side on the points closer than
    ``savings.close`` (with ``savings.halving``, pruned by successive halving: ``HALVING``),
    from random starts; and with ``savings.warm_start``, APGD-CE once more from its random
    start on the points closer than ``CLOSE_RESTART`` (a warm start can trap a point a fresh
    start fools)."""
    first = [AttackRun("dlr-targeted", (r,), seed, None, False) for r in range(1, min(int(targets), FIRST_TARGETS) + 1)]
    rest = tuple(range(FIRST_TARGETS + 1, int(targets) + 1))
    targeted = first + ([AttackRun("dlr-targeted", rest, seed, savings.close, False,
                                   HALVING if savings.halving else None)] if rest else [])
    restart = [AttackRun("ce-standardized", (), seed, CLOSE_RESTART, False)] if savings.warm_start else []
    return [AttackRun("ce-standardized", (), seed, None, savings.warm_start), *targeted, *restart]


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float] | float, *, steps: int = 100,
               targets: int = DEFAULT_TARGETS, restarts: int = 1, seed: int = 0, savings: Savings = Savings(),
               keep_examples: bool = False, batch_size: int = 256,
               device=None, ids: torch.Tensor | None = None, known_fooled: torch.Tensor | None = None,
               advance: Callable[[int], None] | None = None, queries: int | None = None) -> WorstCase:
    """Run the ensemble on x (uint8 or float in [0, 1]) at every eps of ``eps`` (sorted here);
    ``savings`` switches the ensemble's savings off one by one (``Savings``); ``queries`` is the
    gradient-free stage's Square budget per probe, and the decision stage's RayS budget per point
    on outputs that carry only decisions (default ``QUERIES_PER_STEP * steps``, 0: neither stage).

    ``ids`` are the points' indices in the test set (their random starts are drawn from
    them, so a shard or a batch gets what one process would); ``known_fooled`` (n, len(eps))
    marks points already known to be fooled at an eps (from cached smaller eps): they are
    not attacked there. ``advance(k)`` is called with the points done, per batch and eps.
    ``device`` defaults to the model's."""
    start = time.perf_counter()
    device = model_device(model) if device is None else device
    eps = sorted(check_eps(e) for e in ([eps] if isinstance(eps, (int, float)) else eps))
    if int(steps) <= 0 or int(targets) < 0 or int(restarts) <= 0:
        raise AttackError(f"steps and restarts must be positive and targets >= 0, got {steps}, {targets}, {restarts}")
    if keep_examples and known_fooled is not None:
        raise AttackError("keep_examples needs every eps attacked (no known_fooled)")
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    model = classifier(model)
    targets = usable_targets(targets, probe_classes(model, x, y)) if len(y) else int(targets)
    correct, gradients_correct = (torch.zeros(len(y), len(eps), dtype=torch.bool) for _ in range(2))
    clean, label_only = (torch.zeros(len(y), dtype=torch.bool) for _ in range(2))
    examples = torch.empty(len(eps), *x.shape, dtype=torch.float32) if keep_examples else None
    grad_evals = forwards = 0
    queries = QUERIES_PER_STEP * int(steps) if queries is None else int(queries)
    runs = attack_runs(targets, seed, savings)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batch_size, device):
            with torch.no_grad():
                outputs = model(xb)
                net, logits = as_logits(model, outputs)
            label_only[sl] = decisions_only(outputs).cpu()
            fooled = logits.argmax(1) != yb
            clean[sl] = ~fooled.cpu()
            clean_margin = margin(logits, yb)
            worst, worst_margin = xb.clone(), clean_margin.clone()
            for k, e in enumerate(eps):
                if known_fooled is not None:
                    fooled |= known_fooled[sl, k].to(device)
                if e > 0:
                    grad_evals += _attack_robust(net, xb, yb, ids[sl], e, fooled, worst, worst_margin, clean_margin,
                                                 runs, steps, restarts, savings.early_stop, batch_size)
                correct[sl, k] = ~fooled.cpu()
                if keep_examples:
                    examples[k, sl] = worst.cpu()
                if advance is not None:
                    advance(len(yb))
            gradients_correct[sl] = correct[sl]
            if queries:  # the query stages: Square where gradients failed, RayS where only decisions are left
                batch_examples = None if examples is None else examples[:, sl]
                forwards += gradient_free_stage(net, xb, yb, ids[sl], eps, correct[sl], clean_margin, queries, seed,
                                                batch_examples)
                forwards += decision_stage(net, xb, yb, eps, correct[sl], label_only[sl], queries, batch_examples)
    return WorstCase(eps, correct, clean, ensemble_names(int(targets), queries, bool(label_only.any())), grad_evals,
                     time.perf_counter() - start, examples, forwards, gradients_correct, label_only)


def refine_min_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, found: WorstCase, *, rounds: int = 4,
                   steps: int = 100, targets: int = DEFAULT_TARGETS, seed: int = 0, batch_size: int = 256, device=None,
                   ids: torch.Tensor | None = None, advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Each point's smallest fooling eps, narrowed by bisection between the largest grid eps
    it withstood and the smallest that fooled it (``rounds`` halvings of that gap, the
    ensemble's gradient attacks at each midpoint): an upper bound on the point's minimal
    adversarial L-inf norm, within gap / 2**rounds of the best those attacks find. inf where
    never fooled. ``device`` defaults to the model's."""
    device = model_device(model) if device is None else device
    upper = found.min_eps().clone()
    grid = torch.tensor([0.0, *found.eps])
    lower = grid[(grid[None, :] < upper[:, None]).sum(1) - 1].clamp(min=0)  # the largest grid eps below it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    model = classifier(model)
    runs = attack_runs(usable_targets(targets, probe_classes(model, x, y)) if len(y) else 0, seed)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batch_size, device):
            low, high = lower[sl].to(device), upper[sl].to(device)
            open_gap = (high > 0) & torch.isfinite(high)
            with torch.no_grad():
                net, logits = as_logits(model, model(xb))
            for _ in range(int(rounds)):
                mid = (low + high) / 2
                fooled = ~open_gap.clone()
                worst_margin = margin(logits, yb)
                _attack_robust(net, xb, yb, ids[sl], mid, fooled, xb.clone(), worst_margin, worst_margin.clone(),
                               runs, steps, 1, True, batch_size)
                high = torch.where(open_gap & fooled, mid, high)
                low = torch.where(open_gap & ~fooled, mid, low)
            upper[sl] = high.cpu()
            if advance is not None:
                advance(len(yb))
    return upper


def _ensemble_label(settings: dict) -> str:
    targets = f" + APGD-T ({settings['targets']} targets)" if settings.get("targets") else ""
    restarts = settings.get("restarts", 1)
    queries = settings.get("queries", QUERIES_PER_STEP * settings["steps"])
    square = f" + Square ({queries} queries)" if queries else ""
    return f"worst case of APGD-CE{targets}{square}, {settings['steps']} steps" + (
        f", {restarts} restarts" if restarts > 1 else "")


def _ensemble_mask(model, source, x, y, eps, args: AttackArgs, batch_size, device, advance) -> torch.Tensor:
    """The whole set in ``worst_case``'s own batches; a transfer scores on ``model`` the examples
    found on ``source``."""
    found = worst_case(source, x, y, [eps], steps=args.steps, targets=args.targets, restarts=args.restarts,
                       seed=args.seed or 0, batch_size=batch_size, device=device, ids=args.ids,
                       keep_examples=source is not model, advance=advance, queries=args.queries)
    if source is model:
        return found.correct[:, 0]
    with torch.no_grad():
        return torch.cat([model(found.examples[0, i:i + batch_size].to(device)).argmax(1).cpu()
                          == y[i:i + batch_size].cpu() for i in range(0, len(y), batch_size)])


@register_attack("ensemble", steps=100, key=("steps", "restarts", "targets", "queries"), label=_ensemble_label,
                 mask=_ensemble_mask, version=11,  # its numbers: RayS on points whose outputs carry only decisions
                 help="the worst case of APGD-CE, targeted APGD-DLR and Square per point, RayS where outputs "
                      "carry only decisions (the default)")
def _ensemble(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    found = worst_case(model, x, y, [eps], steps=args.steps, targets=args.targets, restarts=args.restarts,
                       seed=args.seed or 0, batch_size=len(y), device=x.device, ids=args.ids, keep_examples=True,
                       queries=args.queries)
    return found.examples[0].to(x.device)
