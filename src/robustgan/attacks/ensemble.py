"""The worst-case ensemble: robustgan's default evaluation (docs/evaluation.md). Its stages
and their constants (``FIRST_TARGETS``, ``CLOSE``, ``HALVING``, ``CLOSE_RESTART``) are declared
in ``attacks.stages``; this module runs them.

Over the eps grid from the largest down (``_descend``), on each test point still to be settled:
APGD-CE, then targeted APGD-DLR towards up to ``targets`` (default 9) other classes (APGD-T, Croce &
Hein 2020 Sec. 4), each attack only on the points every earlier attack failed on, each point
keeping its worst case (the first misclassified example, else the one with the largest
margin max_{i != y} z_i - z_y). Then the query stages on the points every gradient attack
left robust: Square (``gradient_free``), and RayS (``rays``) on points whose outputs carry only the
decision (``outputs.decisions_only``). In L2, FAB-T (``fab.fab_stage``) runs before Square on the
points the gradient stages brought close to the boundary. As in AutoAttack, a point counts as
robust only if every attack fails on it.

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
  closed half their gap (``CLOSE_RESTART``) get APGD-CE once more from its random start;
- APGD-CE (from the worst example) and targets 2-9 give up on a point whose margin ratio is still
  above ``GIVE_UP`` at their first four checkpoints: such a point goes on to the runs from random
  starts and to the query stages, never counted robust by the rule alone.
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

How the grid shares its work (docs/evaluation.md, "How a curve shares its work"):
- from the top down: a point fooled at eps_k goes on to eps_(k-1), APGD-CE starting from the
  fooling example scaled into the smaller ball, so it is mostly fooled again within a few steps;
  a point the ensemble leaves robust at eps_k is settled, robust there and at every smaller
  eps (their balls lie inside). The full ensemble thus runs once per point, at its largest
  robust eps, where the point is close to its boundary;
- monotonicity: a point fooled at eps_k is fooled at every larger eps (the same example lies
  in the larger ball).
``Savings(descend=False)`` runs the grid upwards instead (each eps's still-robust points in full,
APGD-CE from the worst point at the previous eps), and ``Savings(warm_start=False,
early_stop=False)`` attacks every point at every eps from scratch: both to check those claims."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run, margin, target_order
from robustgan.attacks.outputs import as_logits, decisions_only
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.settings import AttackSettings, Batching
from robustgan.attacks.stages import (ENSEMBLE_VERSION, Savings, StageBatch, attack_runs, ensemble_help,
                                      ensemble_label, ensemble_names, run_batch_stages)
from robustgan.attacks.threat import AttackError, attack_mode, check_eps, classifier, get_norm, model_device, probe_classes

__all__ = ["Savings", "WorstCase", "worst_case", "refine_min_eps", "usable_targets"]


@dataclass
class WorstCase:
    """Per-sample results of the ensemble: ``correct[i, k]`` says test point i withstood
    every attack at ``eps[k]`` (ascending eps; monotone in k); accuracies, curves and paired statistics all
    come from this one matrix."""

    eps: list[float]
    correct: torch.Tensor  # (n, len(eps)) bool, on the CPU
    clean: torch.Tensor  # (n,) bool
    attacks: list[str]
    grad_evals: int  # forward-backward passes, summed over points and attacks
    seconds: float
    examples: torch.Tensor | None = None  # (len(eps), n, C, H, W): each point's worst example, on request
    forwards: int = 0  # forward passes without a gradient: the query stages' queries, FAB-T's checks and target ranking
    gradients_correct: torch.Tensor | None = None  # (n, len(eps)): ``correct`` before the gradient-free stage
    decisions_only: torch.Tensor | None = None  # (n,) bool: clean outputs carry only the decision (``decisions_only``)
    by_stage: dict[str, int] = field(default_factory=dict)  # passes per stage: gradient evaluations, or forwards
    # (a query stage's; FAB-T's forward-only checks under "fab-forwards")

    @property
    def accuracy(self) -> list[float]:
        return self.correct.float().mean(0).tolist() if len(self.clean) else [0.0] * len(self.eps)

    def min_eps(self) -> torch.Tensor:
        """Each point's smallest eps of the grid at which it is fooled (0 when the clean image
        is already misclassified, inf when never): accuracy(eps) = P(min_eps > eps)."""
        grid = torch.tensor([0.0, *self.eps, math.inf])
        table = torch.cat([self.clean[:, None], self.correct, torch.zeros(len(self.clean), 1, dtype=torch.bool)], 1)
        return grid[(~table).float().argmax(1)]


def close_to_fooled(worst_margin: torch.Tensor, clean_margin: torch.Tensor, close: float) -> torch.Tensor:
    """Points whose worst example has closed all but ``close`` of the clean logit gap:
    worst margin / clean margin <= close, both negative on a correct point (the ratio is
    invariant to scaling the logits; close=1 takes every point). Clean-misclassified points
    count as close."""
    return (clean_margin >= 0) | (worst_margin >= close * clean_margin)


@dataclass
class Attacked:
    """One batch under the gradient stages: its points and where the attack has got to on each
    (``fooled``, ``worst`` example and its margin, all updated in place)."""

    model: nn.Module  # outputs logits
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor  # the points' indices in the test set (CPU): per-point random starts
    fooled: torch.Tensor
    worst: torch.Tensor
    worst_margin: torch.Tensor
    clean_margin: torch.Tensor
    settled_margin: torch.Tensor | None = None  # the worst margin at the largest eps each point withstood (-inf: none)


def _attack_robust(attacked: Attacked, eps, runs, settings: AttackSettings, early_stop: bool,
                   max_rows: int) -> Counter:
    """Every attack of ``runs`` (``stages.attack_runs``) in turn on the points not yet fooled (all
    points without early stop), the adaptive ones only on the points ``close_to_fooled``, at
    ``eps`` (a number or one per point), with ``settings``' steps and restarts; updates ``attacked`` in
    place and returns the gradient evaluations spent per stage. APGD-T's targets are ranked at each
    point's worst example after the first attack (where the attack has got to); a run with
    several target ranks attacks each point towards all of them side by side, one row per
    (rank, point), at most ``max_rows`` rows per call (but one point's ranks always in one
    call), and keeps each point's worst row."""
    grad_evals = Counter()
    order = None
    for run in runs:
        todo = ~attacked.fooled if early_stop else torch.ones_like(attacked.fooled)
        if run.threshold is not None:
            todo &= close_to_fooled(attacked.worst_margin, attacked.clean_margin, run.threshold)
        if run.ranks and order is None:
            with torch.no_grad():
                order = target_order(attacked.model(attacked.worst).float(), attacked.y)
        # as AutoAttack: at most (classes - 1) targets; the last column of ``order`` is the true class
        ranks = torch.tensor([r for r in run.ranks if r < order.shape[1]] if run.ranks else [], dtype=torch.long)
        idx = todo.nonzero()[:, 0]
        if not len(idx) or (run.ranks and not len(ranks)):
            continue
        per_call = max(1, max_rows // max(len(ranks), 1))
        for part in idx.split(per_call):
            got_x, got_fooled, got_margin, evals = _attack_side_by_side(attacked, eps, order, part, ranks, run, settings,
                                                                        early_stop)
            grad_evals[run.stage] += evals
            was = attacked.fooled[part]
            better = ~was & (got_fooled | (got_margin > attacked.worst_margin[part]))
            attacked.worst[part[better]], attacked.worst_margin[part[better]] = got_x[better], got_margin[better]
            attacked.fooled[part] = was | got_fooled
    return grad_evals


def _ascend(attacked: Attacked, eps: list[float], runs, settings: AttackSettings, batching: Batching,
            known: torch.Tensor | None, correct: torch.Tensor, examples: torch.Tensor | None, *,
            early_stop: bool) -> Counter:
    """The gradient stages over the grid from the smallest eps up (``Savings(descend=False)``):
    at each eps every point not yet fooled (every point without ``early_stop``), APGD-CE from its
    worst point at the previous eps. Fills ``correct`` and ``examples`` in place as ``_descend``."""
    spent = Counter()
    for k, e in enumerate(eps):
        if known is not None:
            attacked.fooled |= known[:, k]
        if e > 0:
            spent += _attack_robust(attacked, e, runs, settings, early_stop, batching.batch_size)
        correct[:, k] = ~attacked.fooled.cpu()
        if e > 0:
            attacked.settled_margin = torch.where(attacked.fooled, attacked.settled_margin, attacked.worst_margin)
        if examples is not None:
            examples[k] = attacked.worst.cpu()
        batching.done(len(attacked.y))
    return spent


def _descend(attacked: Attacked, eps: list[float], runs, settings: AttackSettings, batching: Batching,
             known: torch.Tensor | None, correct: torch.Tensor, examples: torch.Tensor | None) -> Counter:
    """The gradient stages over the grid from the largest eps down (``Savings.descend``), filling
    ``correct`` (n, len(eps), CPU) and ``examples`` in place; returns the passes per stage.

    Every point is attacked at the largest eps first, from its clean image. A point fooled at
    eps_k goes on to eps_(k-1), its attack starting from the fooling example scaled into the
    smaller ball (x + (x_adv - x) eps_(k-1) / eps_k: in the box, as a convex combination of
    two points in it), so most such attacks are won within a few steps; a point the whole
    ensemble leaves robust at eps_k is settled: robust there, and at every smaller eps, whose
    ball lies inside (an attack with less room seldom finds what the one with more room missed:
    docs/evaluation.md measures how seldom). The one attack that runs in full on a point is thus
    the one at its largest robust eps, where it is close to fooled; an ascending pass runs it at
    every robust eps below as well. ``known`` (n, len(eps)) marks points known fooled (not
    attacked there)."""
    spent = Counter()
    n = len(attacked.y)
    x, fooled_clean = attacked.x, attacked.fooled.clone()
    if known is not None:  # fooled at eps_k: fooled at every larger eps
        known = known.int().cummax(1).values.bool()
    start, settled = x.clone(), fooled_clean.clone()  # settled: nothing left to attack at smaller eps
    worst = x.clone()
    for k in range(len(eps) - 1, -1, -1):
        e = eps[k]
        todo = ~settled
        if known is not None:
            todo &= ~known[:, k]
        idx = todo.nonzero()[:, 0]
        if e > 0 and len(idx):
            sub = Attacked(attacked.model, x[idx], attacked.y[idx], attacked.ids[idx.cpu()],
                           torch.zeros(len(idx), dtype=torch.bool, device=x.device), start[idx],
                           torch.full((len(idx),), -math.inf, device=x.device), attacked.clean_margin[idx])
            spent += _attack_robust(sub, e, runs, settings, True, batching.batch_size)
            worst[idx] = sub.worst
            settled[idx[~sub.fooled]] = True
            attacked.settled_margin[idx[~sub.fooled]] = sub.worst_margin[~sub.fooled]
            hit = torch.zeros(n, dtype=torch.bool, device=x.device)
            hit[idx[sub.fooled]] = True
        else:  # eps 0 (the clean image), or only known-fooled points left at this eps
            hit = torch.zeros(n, dtype=torch.bool, device=x.device)
            if e <= 0:
                settled |= todo
                worst = x.clone()
        now_fooled = fooled_clean | hit | (known[:, k] if known is not None else False)
        correct[:, k] = ~now_fooled.cpu()
        if examples is not None:
            examples[k] = worst.cpu()
        if k:  # the next eps starts from this one's example, scaled into its ball (inf: the box's radius)
            threat = get_norm(settings.norm)
            scale = eps[k - 1] / min(e, threat.unbounded(x)) if e > 0 else 0.0
            start = threat.project(x + (worst - x) * scale, x, eps[k - 1])  # float rounding kept inside
            worst = torch.where(settled[:, None, None, None], start, worst)  # a settled point's example, scaled down
        batching.done(n)
    correct &= ~fooled_clean.cpu()[:, None]
    return spent


def _attack_side_by_side(attacked: Attacked, eps, order, idx, ranks, run, settings: AttackSettings, early_stop):
    """``run`` on the points ``idx`` towards every target rank of ``ranks`` at once (none:
    untargeted), in one ``apgd_run`` call: each point's worst row (fooled, else the largest
    margin), whether it was fooled, its margin, and the gradient evaluations spent."""
    copies = max(len(ranks), 1)
    rows = idx.repeat(copies)  # rank-major: row j * len(idx) + i attacks point idx[i] towards ranks[j]
    rank = ranks.repeat_interleave(len(idx))
    got = apgd_run(attacked.model, attacked.x[rows], attacked.y[rows], eps[rows] if isinstance(eps, torch.Tensor) else eps, steps=settings.steps,
                   loss=run.loss, target=order[rows, rank.to(rows.device) - 1] if len(ranks) else None,
                   restarts=settings.restarts, seed=run.seed + 7919 * rank if len(ranks) else run.seed, ids=attacked.ids[rows.cpu()],
                   early_stop=early_stop, x_init=attacked.worst[rows] if run.warm else None,
                   groups=rows if copies > 1 else None, prune=run.prune if copies > 1 else None,
                   give_up=(run.give_up, attacked.clean_margin[rows]) if run.give_up else None, norm=settings.norm)
    with torch.no_grad():
        got_margin = margin(attacked.model(got.x_adv).float(), attacked.y[rows])
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


def _check_worst_case(settings: AttackSettings, keep_examples: bool, known_fooled) -> None:
    """One-line errors for settings ``worst_case`` cannot run."""
    if int(settings.steps) <= 0 or int(settings.targets) < 0 or int(settings.restarts) <= 0:
        raise AttackError(f"steps and restarts must be positive and targets >= 0, got {settings.steps}, "
                          f"{settings.targets}, {settings.restarts}")
    if keep_examples and known_fooled is not None:
        raise AttackError("keep_examples needs every eps attacked (no known_fooled)")


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float] | float,
               settings: AttackSettings = AttackSettings(), batching: Batching = Batching(), *,
               savings: Savings = Savings(), keep_examples: bool = False, ids: torch.Tensor | None = None,
               known_fooled: torch.Tensor | None = None) -> WorstCase:
    """Run the ensemble's stages (``stages.STAGES``) on x (uint8 or float in [0, 1]) at every eps
    of ``eps`` (sorted here), with ``settings``' steps, restarts, targets, query budget and seed
    (its name is not read); ``savings`` switches the ensemble's savings off one by one.

    ``ids`` are the points' indices in the test set (their random starts are drawn from
    them, so a shard or a batch gets what one process would); ``known_fooled`` (n, len(eps))
    marks points already known to be fooled at an eps (from cached smaller eps): they are
    not attacked there. ``batching.advance(k)`` is called with the points done, per batch and eps."""
    start = time.perf_counter()
    settings = replace(settings, name="ensemble").resolved()
    device = model_device(model) if batching.device is None else batching.device
    eps = sorted(check_eps(e, settings.norm) for e in ([eps] if isinstance(eps, (int, float)) else eps))
    _check_worst_case(settings, keep_examples, known_fooled)
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    model = classifier(model)
    targets = usable_targets(settings.targets, probe_classes(model, x, y)) if len(y) else int(settings.targets)
    correct, gradients_correct = (torch.zeros(len(y), len(eps), dtype=torch.bool) for _ in range(2))
    clean, label_only = (torch.zeros(len(y), dtype=torch.bool) for _ in range(2))
    examples = torch.empty(len(eps), *x.shape, dtype=torch.float32) if keep_examples else None
    spent, queried = Counter(), Counter()  # gradient evaluations, forward-only passes per stage
    seed = settings.seed or 0
    runs = attack_runs(targets, seed, savings)
    over_grid = _descend if savings.descend and savings.early_stop else partial(_ascend, early_stop=savings.early_stop)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batching.batch_size, device):
            with torch.no_grad():
                outputs = model(xb)
                net, logits = as_logits(model, outputs)
            label_only[sl] = decisions_only(outputs).cpu()
            fooled = logits.argmax(1) != yb
            clean[sl] = ~fooled.cpu()
            clean_margin = margin(logits, yb)
            attacked = Attacked(net, xb, yb, ids[sl], fooled, xb.clone(), clean_margin.clone(), clean_margin,
                                torch.full_like(clean_margin, -math.inf))
            known = None if known_fooled is None else known_fooled[sl].to(device)
            spent += over_grid(attacked, eps, runs, settings, batching, known, correct[sl],
                               None if examples is None else examples[:, sl])
            batch = StageBatch(model=net, x=xb, y=yb, ids=ids[sl], eps=eps, correct=correct[sl],
                               clean_margin=clean_margin, settled_margin=attacked.settled_margin, targets=targets,
                               steps=int(settings.steps), decisions_only=label_only[sl], queries=settings.queries, seed=seed,
                               examples=None if examples is None else examples[:, sl],
                               square_give_up=savings.square_give_up, norm=settings.norm, fab_close=savings.fab_close,
                               fab_give_up=savings.fab_give_up)
            run_batch_stages(batch, gradients_correct[sl], spent, queried)
    names = ensemble_names(int(targets), settings.queries, bool(label_only.any()), settings.norm)
    return WorstCase(eps, correct, clean, names, sum(spent.values()), time.perf_counter() - start, examples,
                     sum(queried.values()), gradients_correct, label_only,
                     {k: v for k, v in (spent + queried).items() if v})


def refine_min_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, found: WorstCase,
                   settings: AttackSettings = AttackSettings(), batching: Batching = Batching(), *, rounds: int = 4,
                   ids: torch.Tensor | None = None) -> torch.Tensor:
    """Each point's smallest fooling eps, narrowed by bisection between the largest grid eps
    it withstood and the smallest that fooled it (``rounds`` halvings of that gap, the
    ensemble's gradient stages at each midpoint, one restart): an upper bound on the point's
    minimal adversarial norm (L-inf, or L2 in the settings' norm), within gap / 2**rounds of the best those attacks find. inf
    where never fooled."""
    settings = replace(settings, name="ensemble", restarts=1).resolved()
    device = model_device(model) if batching.device is None else batching.device
    upper = found.min_eps().clone()
    grid = torch.tensor([0.0, *found.eps])
    lower = grid[(grid[None, :] < upper[:, None]).sum(1) - 1].clamp(min=0)  # the largest grid eps below it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    model = classifier(model)
    runs = attack_runs(usable_targets(settings.targets, probe_classes(model, x, y)) if len(y) else 0, settings.seed or 0)
    with attack_mode(model):
        for sl, xb, yb in batches(x, y, batching.batch_size, device):
            low, high = lower[sl].to(device), upper[sl].to(device)
            open_gap = (high > 0) & torch.isfinite(high)
            with torch.no_grad():
                net, logits = as_logits(model, model(xb))
            for _ in range(int(rounds)):
                mid = (low + high) / 2
                fooled = ~open_gap.clone()
                worst_margin = margin(logits, yb)
                _attack_robust(Attacked(net, xb, yb, ids[sl], fooled, xb.clone(), worst_margin, worst_margin.clone()),
                               mid, runs, settings, True, batching.batch_size)
                high = torch.where(open_gap & fooled, mid, high)
                low = torch.where(open_gap & ~fooled, mid, low)
            upper[sl] = high.cpu()
            batching.done(len(yb))
    return upper


def _ensemble_mask(model, source, x, y, eps, args: AttackArgs, batching: Batching) -> torch.Tensor:
    """The whole set in ``worst_case``'s own batches; a transfer scores on ``model`` the examples
    found on ``source``."""
    found = worst_case(source, x, y, [eps], _ensemble_settings(args), batching, ids=args.ids,
                       keep_examples=source is not model)
    if source is model:
        return found.correct[:, 0]
    step = batching.batch_size
    with torch.no_grad():
        return torch.cat([model(found.examples[0, i:i + step].to(x.device)).argmax(1).cpu() == y[i:i + step].cpu()
                          for i in range(0, len(y), step)])


def _ensemble_settings(args: AttackArgs) -> AttackSettings:
    return AttackSettings("ensemble", args.steps, None, args.restarts, args.targets, args.queries, args.seed or 0, args.norm)


@register_attack("ensemble", steps=100, key=("steps", "restarts", "targets", "queries"), label=ensemble_label,
                 norms=("linf", "l2"),
                 mask=_ensemble_mask, version=ENSEMBLE_VERSION, help=ensemble_help() + " (the default)")
def _ensemble(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    found = worst_case(model, x, y, [eps], _ensemble_settings(args), Batching(x.device, len(y)), ids=args.ids,
                       keep_examples=True)
    return found.examples[0].to(x.device)
