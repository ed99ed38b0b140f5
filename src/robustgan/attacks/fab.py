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
gradient ascent astray (in L2 on some models: BENCHMARKS.md, "L2"). `--attack fab --norm l2`; the
default ensemble does not run it (its cost: 2 x 100 passes per target and point)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.apgd import target_order
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import attack_mode, check_eps, get_norm, l2_sizes

STEPS = 100  # iterations per target, as AutoAttack's FAB-T
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the paper's (and AutoAttack's) defaults
BISECTION = 30  # halvings of the multiplier's range in ``boundary_step``


def boundary_step(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per row, the shortest d (L2) with <w, d> = c and lo <= d <= hi (w, lo, hi (k, n); c (k,);
    lo <= 0 <= hi): by the KKT conditions d = clip(lam w, lo, hi) for one scalar lam, and
    <w, clip(lam w, lo, hi)> grows with lam, so lam is found by bisection between the multipliers
    where every coordinate is clipped. Where c is out of reach, the closest reachable point."""
    with torch.no_grad():
        safe = torch.where(w == 0, torch.ones_like(w), w)
        up = torch.where(w > 0, hi / safe, torch.where(w < 0, lo / safe, torch.zeros_like(w))).amax(1)
        down = torch.where(w > 0, lo / safe, torch.where(w < 0, hi / safe, torch.zeros_like(w))).amin(1)
        a, b = down, up
        for _ in range(BISECTION):
            mid = (a + b) / 2
            below = (w * torch.maximum(torch.minimum(mid[:, None] * w, hi), lo)).sum(1) < c
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
        return torch.maximum(torch.minimum((a + b)[:, None] / 2 * w, hi), lo)


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *, steps: int = STEPS,
                 stop_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """FAB-T towards ``target`` (k,) on x (k, C, H, W) in [0, 1], the model in eval mode with
    frozen parameters (outputs logits): (the closest misclassified point found per row, its L2
    distance to x (inf where none), gradient evaluations, forward-only passes). A row stops once
    it has a point within ``stop_at`` (k,) of x."""
    k = len(x)
    x0 = x.flatten(1)
    best, best_size = x.clone(), torch.full((k,), math.inf, device=x.device)
    stop_at = torch.zeros(k, device=x.device) if stop_at is None else stop_at.to(x.device)
    live, cur = torch.arange(k, device=x.device), x0.clone()
    evals = forwards = 0
    for _ in range(steps):
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
        live, cur = live[keep], cur[keep]
        if not len(live):
            break
    return best, best_size, evals, forwards


def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = STEPS,
        targets: int = 9) -> torch.Tensor:
    """FAB-T in L2 on a batch x (N, C, H, W) in [0, 1], towards each point's ``targets`` most
    likely other classes at the clean image (AutoAttack's 9), each on the points the earlier ones
    left robust: x_adv in the L2 eps-ball and [0, 1], the closest misclassified point found where
    it lies within eps, else x."""
    eps = check_eps(eps, "l2")
    x = x.detach()
    x_adv = x.clone()
    with attack_mode(model), torch.no_grad():
        logits = model(x).float()
    todo = (logits.argmax(1) == y).nonzero()[:, 0]
    order = target_order(logits, y)
    radius = torch.full((len(x),), min(eps, get_norm("l2").unbounded(x)), device=x.device)
    with attack_mode(model):
        for rank in range(min(int(targets), logits.shape[1] - 1)):
            if not len(todo):
                break
            best, size, _, _ = fab_targeted(model, x[todo], y[todo], order[todo, rank], steps=steps, stop_at=radius[todo])
            hit = size <= radius[todo]
            x_adv[todo[hit]] = get_norm("l2").project(best[hit], x[todo[hit]], eps)
            todo = todo[~hit]
    return x_adv


@register_attack("fab", steps=STEPS, key=("steps", "targets"), norms=("l2",),
                 help="FAB-T, the minimum-norm boundary attack (Croce & Hein 2020, ICML), L2 only: towards up to "
                      "9 targets, the closest misclassified point within eps")
def _fab(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return fab(model, x, y, eps, steps=args.steps, targets=args.targets or 9)
