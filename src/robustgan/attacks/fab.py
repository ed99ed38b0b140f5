"""FAB, the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial examples
with a fast adaptive boundary attack", ICML 2020), targeted, in L2: a minimum-norm attack. Written
from the paper (Sec. 3, Alg. 1). Each step linearizes the decision boundary between the true
class y and the target t, g(z) = f_y(z) - f_t(z) ~ g(x_i) + <grad g(x_i), z - x_i> = 0, and
projects onto that hyperplane within the [0, 1] box (``boundary_step``) both the current iterate
x_i (delta_i) and the original image x (delta_o); the next iterate is the clipped convex
combination (1 - a)(x_i + eta delta_i) + a (x + eta delta_o), a = min(|delta_i| / (|delta_i| +
|delta_o|), ALPHA_MAX) (eq. 8-9), and once an iterate is misclassified it is kept as the best if
closer to x than the last, and pulled back towards x by x + BETA (x_i - x) (the backward step).

It follows the boundary rather than a loss, so it finds points where the loss surface leads
gradient ascent astray (in L2 on some models: BENCHMARKS.md, "L2"). `--attack fab --norm l2` runs it
alone; the default ensemble runs it in L2 on the points the gradient stages brought close to the
boundary and could not push over (``fab_stage``)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.apgd import target_order
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import attack_mode, check_eps, get_norm, l2_sizes

STEPS = 100  # iterations per target, as AutoAttack's FAB-T
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the paper's (and AutoAttack's) defaults
# The stage's FAB-T gives up on a (point, target) row whose closest example is still farther than
# 1.5 times the point's eps after a quarter of its steps, or 1.25 times after half (none found:
# infinitely far); at 100 steps, the 9 rows that ended within eps (the tiny CNN's, gate at 90%; none
# on the L2 digits preset) were at most 1.26 and 1.18 times (docs/evaluation.md).
GIVE_UP = ((0.25, 1.5), (0.5, 1.25))


def boundary_step(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per row, the shortest d (L2) with <w, d> = c and lo <= d <= hi (w, lo, hi (k, n); c (k,);
    lo <= 0 <= hi). By the KKT conditions d = clip(lam w', lo, hi) with w' = sign(c) w and one
    lam >= 0; h(lam) = <w', clip(lam w', lo, hi)> is piecewise linear and nondecreasing, with a
    breakpoint where each coordinate reaches its bound (t_i = hi_i / w'_i or lo_i / w'_i). So the
    breakpoints are sorted, the segment where h crosses |c| found, and lam solved on it exactly
    (in float64: no tiny w_i moves it). Where |c| is out of reach, every coordinate at its bound."""
    with torch.no_grad():
        sign = torch.where(c < 0, -1.0, 1.0).to(torch.float64)
        w2, lo2, hi2 = w.double() * sign[:, None], lo.double(), hi.double()
        target = c.double().abs()
        bound = torch.where(w2 > 0, hi2, lo2)  # where each coordinate stops as lam grows
        t = torch.where(w2 != 0, bound / torch.where(w2 != 0, w2, torch.ones_like(w2)), torch.full_like(w2, 1e30))
        t, order = t.sort(1)
        sq, sat = (w2 * w2).gather(1, order), (w2 * bound).gather(1, order)
        rest = sq.flip(1).cumsum(1).flip(1)  # sum of w'^2 over the coordinates not yet at their bound
        done = sat.cumsum(1) - sat  # sum of w'_i b_i over those already there
        h = t * rest + done  # h at each breakpoint
        j = (h < target[:, None]).sum(1, keepdim=True)  # the segment [t_(j-1), t_j] where h crosses |c|
        inside = j < t.shape[1]
        j = j.clamp(max=t.shape[1] - 1)
        slope = rest.gather(1, j)
        lam = torch.where(inside & (slope > 0), (target[:, None] - done.gather(1, j)) / slope.clamp(min=1e-300),
                          torch.full_like(slope, 1e30))
        d = torch.maximum(torch.minimum(lam * w2, hi2), lo2)
        return d.to(w.dtype)


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *, steps: int = STEPS,
                 stop_at: torch.Tensor | None = None, give_up: tuple[tuple[float, float], ...] = ()
                 ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """FAB-T towards ``target`` (k,) on x (k, C, H, W) in [0, 1], the model in eval mode with
    frozen parameters (outputs logits): (the closest misclassified point found per row, its L2
    distance to x (inf where none), gradient evaluations, forward-only passes). A row stops once
    it has a point within ``stop_at`` (k,) of x, or, for each (fraction, ratio) of ``give_up`` (which
    needs ``stop_at``), when after that fraction of its steps its closest point is farther than
    ratio * ``stop_at``."""
    k = len(x)
    x0 = x.flatten(1)
    best, best_size = x.clone(), torch.full((k,), math.inf, device=x.device)
    stop_at = torch.zeros(k, device=x.device) if stop_at is None else stop_at.to(x.device)
    live, cur = torch.arange(k, device=x.device), x0.clone()
    evals = forwards = 0
    checks = {}  # step -> ratio; two fractions on one step (few steps) keep the more lenient
    for fraction, ratio in give_up:
        step = max(1, math.ceil(round(fraction * steps, 6)))
        checks[step] = max(ratio, checks.get(step, 0.0))
    for step in range(1, steps + 1):
        point = cur.view(-1, *x.shape[1:]).requires_grad_(True)
        with torch.enable_grad():
            logits = model(point).float()
            g = logits.gather(1, y[live, None])[:, 0] - logits.gather(1, target[live, None])[:, 0]
            (w,) = torch.autograd.grad(g.sum(), point)
        evals += len(live)
        w, g, origin = w.flatten(1), g.detach(), x0[live]
        to_here = boundary_step(w, -g, -cur, 1 - cur)  # delta_i: from the iterate
        to_origin = boundary_step(w, -g - (w * (origin - cur)).sum(1), -origin, 1 - origin)  # delta_o: from x
        a = (l2_sizes(to_here) / (l2_sizes(to_here) + l2_sizes(to_origin)).clamp(min=1e-12)).clamp(max=ALPHA_MAX)
        cur = ((1 - a)[:, None] * (cur + ETA * to_here) + a[:, None] * (origin + ETA * to_origin)).clamp(0, 1)
        with torch.no_grad():
            fooled = model(cur.view(-1, *x.shape[1:])).float().argmax(1) != y[live]
        forwards += len(live)
        size = l2_sizes(cur - origin)
        closer = fooled & (size < best_size[live])
        best[live[closer]] = cur[closer].view(-1, *x.shape[1:])
        best_size[live[closer]] = size[closer]
        cur = torch.where(fooled[:, None], origin + BETA * (cur - origin), cur)  # the backward step
        keep = best_size[live] > stop_at[live]
        if step in checks:
            keep &= best_size[live] <= checks[step] * stop_at[live]
        live, cur = live[keep], cur[keep]
        if not len(live):
            break
    return best, best_size, evals, forwards


def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = STEPS,
        targets: int = 9) -> torch.Tensor:
    """FAB-T in L2 on a batch x (N, C, H, W) in [0, 1], towards each point's ``targets`` most
    likely other classes at the clean image (AutoAttack's 9), each on the points the earlier ones
    left robust: x_adv in the L2 eps-ball and [0, 1], the closest misclassified point found where
    it lies within eps, else x. ``targets`` 0 runs none (x comes back)."""
    eps = check_eps(eps, "l2")
    x = x.detach()
    x_adv = x.clone()
    with attack_mode(model), torch.no_grad():
        logits = model(x).float()
    todo = (logits.argmax(1) == y).nonzero()[:, 0]
    if not len(todo) or not targets:
        return x_adv
    radius = torch.full((len(todo),), min(eps, get_norm("l2").unbounded(x)), device=x.device)
    with attack_mode(model):
        best, size, _, _ = closest_over_targets(model, x[todo], y[todo], targets, radius, steps)
    hit = size <= radius
    x_adv[todo[hit]] = get_norm("l2").project(best[hit], x[todo[hit]], eps)
    return x_adv


def fab_stage(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], correct: torch.Tensor,
              settled_margin: torch.Tensor, clean_margin: torch.Tensor, targets: int, close: float,
              steps: int = STEPS, give_up: tuple[tuple[float, float], ...] = GIVE_UP,
              examples: torch.Tensor | None = None) -> tuple[int, int]:
    """The ensemble's FAB-T stage in L2, run after its gradient stages; returns (gradient
    evaluations, forward-only passes).

    It takes each point still robust somewhere on the grid (``correct`` (n, len(eps)), CPU,
    ascending eps) whose worst example at its largest robust eps has margin ratio
    ``settled_margin / clean_margin`` <= ``close`` (both (n,), on the device; ``close`` >= 1:
    every such point). On those, ``closest_over_targets`` runs FAB-T towards up to ``targets``
    classes, ``steps`` each, a row stopping once within that eps or on ``give_up``. FAB minimises
    the distance, so one run settles the point at every eps: its closest example fools it at each
    eps of at least its distance (``correct`` and ``examples`` updated in place)."""
    grid = torch.tensor(eps)
    at = correct.sum(1) - 1  # the largest robust eps (correct is monotone); -1: fooled everywhere
    unbounded = get_norm("l2").unbounded(x)
    ratio = settled_margin / clean_margin.clamp(max=-1e-12)  # both negative on a robust point
    gated = (ratio <= close) | (close >= 1)  # 1: every point (a worst margin below the clean one gives a ratio > 1)
    todo = ((at >= 0).to(x.device) & gated).nonzero()[:, 0]
    todo = todo[grid[at[todo.cpu()]] > 0]
    if not len(todo) or not targets:
        return 0, 0
    radius = grid[at[todo.cpu()]].clamp(max=unbounded).to(x.device)
    best, size, evals, forwards = closest_over_targets(model, x[todo], y[todo], targets, radius, steps, give_up)
    todo = todo.cpu()
    reach = grid.clamp(max=unbounded)
    hit = correct[todo] & (reach[None, :] >= size.cpu()[:, None])  # (len(todo), len(eps))
    if examples is not None:
        for k in hit.any(0).nonzero()[:, 0].tolist():
            rows = hit[:, k].nonzero()[:, 0]
            examples[k, todo[rows]] = get_norm("l2").project(best[rows.to(x.device)], x[todo[rows].to(x.device)],
                                                             float(reach[k])).cpu()
    correct[todo] &= ~hit
    return evals, forwards + len(todo)  # one forward ranked the targets


def closest_over_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: int, radius: torch.Tensor,
                         steps: int = STEPS, give_up: tuple[tuple[float, float], ...] = ()
                         ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """FAB-T on x (k, C, H, W) towards each point's ``targets`` most likely other classes at the
    clean image, one after the other on the rows not yet within ``radius`` (k,) of x: (the closest
    misclassified point found per row, its distance (inf where none), gradient evaluations,
    forward-only passes)."""
    with torch.no_grad():
        order = target_order(model(x).float(), y)
    evals = forwards = 0
    size, best = torch.full((len(x),), math.inf, device=x.device), x.clone()
    for rank in range(min(int(targets), order.shape[1] - 1)):
        left = (size > radius).nonzero()[:, 0]
        if not len(left):
            break
        found, found_size, run_evals, run_forwards = fab_targeted(model, x[left], y[left], order[left, rank],
                                                                  steps=steps, stop_at=radius[left], give_up=give_up)
        evals, forwards = evals + run_evals, forwards + run_forwards
        closer = found_size < size[left]
        size[left[closer]], best[left[closer]] = found_size[closer], found[closer]
    return best, size, evals, forwards


@register_attack("fab", steps=STEPS, key=("steps", "targets"), norms=("l2",),
                 help="FAB-T, the minimum-norm boundary attack (Croce & Hein 2020, ICML), L2 only: towards up to "
                      "9 targets, the closest misclassified point within eps")
def _fab(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return fab(model, x, y, eps, steps=args.steps, targets=args.targets)
