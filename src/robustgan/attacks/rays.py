"""RayS (Chen & Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack", KDD 2020),
L-inf: a decision-based attack that reads only the predicted label. It searches over ray
directions d in {-1, +1}^D for the one whose decision boundary is nearest: the radius
r(d) = min {r : argmax f(clip(x + r d, 0, 1)) != y} is the L-inf distance along d, and the best
(r*, d*) so far is improved by flipping the signs of one block of coordinates at a time,
blocks halving in size level after level (Alg. 1, the hierarchical search); a flipped direction
is kept only if it is adversarial at the current r* (one query), and then its own radius is
found by binary search (Alg. 2). Where every other signal is gone (outputs that carry only the
decision: ``outputs.decisions_only``), this is the attack that still works.

Batched: all points walk the same block schedule side by side, one forward pass per step for
the points still searching; each point stops once r* is at most its ``stop_at`` (fooled where
it matters) or its ``queries`` are spent. Deterministic: no random draws."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import AttackError, attack_mode, check_eps

QUERIES = 5000  # per point, the budget of the ensemble's other gradient-free attack (Square)
TOL = 1e-3  # binary search: the radius is found to within this (pixel scale)
LINE = 10  # the first direction's radius is searched on a line of this many points in (0, 1] first


@torch.no_grad()
def ray_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, queries: int = QUERIES,
               stop_at: torch.Tensor | float = 0.0, tol: float = TOL) -> tuple[torch.Tensor, torch.Tensor, int]:
    """RayS on a batch x (N, C, H, W) in [0, 1]: (r* (N,), inf where no adversarial ray was
    found; the direction d* (N, C, H, W) of +-1; the forward passes spent, summed over points).
    A point stops searching once r* <= ``stop_at`` (a number or one per point) or after about
    ``queries`` forward passes (a binary search under way is finished). The model must already
    be in eval mode (``rays`` and the ensemble's stage run it in ``attack_mode``)."""
    n, shape = len(x), x.shape[1:]
    dim = shape.numel()
    stop_at = torch.as_tensor(stop_at, dtype=x.dtype, device=x.device).expand(n)
    sign = torch.ones(n, dim, dtype=x.dtype, device=x.device)
    best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    used = torch.zeros(n, dtype=torch.long, device=x.device)
    level = block = 0

    def fooled(rows, direction, radius):  # one forward pass of x[rows] + radius * direction
        used[rows] += 1
        x_new = (x[rows] + radius.view(-1, *[1] * len(shape)) * direction.view(-1, *shape)).clamp(0, 1)
        return model(x_new).argmax(1) != y[rows]

    while True:
        rows = ((best > stop_at) & (used < queries)).nonzero()[:, 0]
        if not len(rows):
            break
        size = math.ceil(dim / 2 ** level)
        first, end = block * size, min(dim, (block + 1) * size)  # this step's block of coordinates
        attempt = sign[rows].clone()
        attempt[:, first:end] *= -1
        # is the flipped direction adversarial at r* (or, with no ray found yet, anywhere on a line)?
        found = torch.full((len(rows),), math.inf, dtype=x.dtype, device=x.device)
        known = torch.isfinite(best[rows])
        if known.any():
            at = best[rows][known]
            found[known] = torch.where(fooled(rows[known], attempt[known], at), at, math.inf)
        for step in range(1, LINE + 1):
            todo = (~known & torch.isinf(found)).nonzero()[:, 0]
            if not len(todo):
                break
            radius = torch.full((len(todo),), step / LINE, dtype=x.dtype, device=x.device)
            found[todo] = torch.where(fooled(rows[todo], attempt[todo], radius), radius, math.inf)
        # binary search on the rays that beat r*: the smallest radius still adversarial, to ``tol``
        keep = torch.isfinite(found).nonzero()[:, 0]
        lo, hi = torch.zeros(len(keep), dtype=x.dtype, device=x.device), found[keep]
        while len(keep):
            wide = (hi - lo > tol).nonzero()[:, 0]  # brackets not yet narrowed to ``tol``
            if not len(wide):
                break
            mid = (lo[wide] + hi[wide]) / 2
            hit = fooled(rows[keep[wide]], attempt[keep[wide]], mid)
            hi[wide] = torch.where(hit, mid, hi[wide])
            lo[wide] = torch.where(hit, lo[wide], mid)
        better = hi < best[rows[keep]]
        best[rows[keep[better]]], sign[rows[keep[better]]] = hi[better], attempt[keep[better]]
        block += 1
        if block == 2 ** level or end == dim:
            level, block = level + 1, 0
    return best, sign.view(n, *shape), int(used.sum())


def rays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = QUERIES) -> torch.Tensor:
    """RayS on a batch at ``eps``: x_adv in the eps-ball and [0, 1] (the adversarial point on the
    best ray where its radius is at most eps, else x), each point up to ``queries`` forward passes."""
    eps = check_eps(eps)
    x = x.detach()
    with attack_mode(model):
        best, sign, _ = ray_search(model, x, y, queries=queries, stop_at=eps)
    hit = best <= eps
    radius = torch.where(hit, best, torch.zeros_like(best)).view(-1, *[1] * (x.ndim - 1))
    return (x + radius * sign).clamp(0, 1)  # x itself where no ray within eps was found


@register_attack("rays", steps=QUERIES, key=("steps",), queries_only=True, norms=("linf",),
                 help="RayS, decision-based: reads only the predicted label (Chen & Gu 2020); --steps or --queries: "
                      "queries per point")
def _rays(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    if args.norm != "linf":
        raise AttackError(f"rays is defined in L-inf only, not in {args.norm}")
    return rays(model, x, y, eps, queries=args.steps)


def decision_stage(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], correct: torch.Tensor,
                   label_only: torch.Tensor, queries: int, examples: torch.Tensor | None = None) -> int:
    """The ensemble's last stage: RayS on the points whose outputs carry only the decision
    (``label_only`` (n,), CPU) and that every earlier attack left robust at some eps > 0 of ``eps``
    (ascending; ``correct`` (n, len(eps)), CPU, updated in place, as ``examples``). One search
    per point serves the whole grid: it stops once the best ray's radius is at most the
    smallest eps the point withstood, and fools it at every eps at least that radius. Returns
    the forward passes spent."""
    grid = torch.tensor(eps, dtype=x.dtype)
    open_eps = correct & (grid > 0)  # eps 0 needs no attack: a search would never get below it
    todo = (label_only & open_eps.any(1)).nonzero()[:, 0]
    if not len(todo) or not queries:
        return 0
    smallest = torch.where(open_eps[todo], grid, math.inf).amin(1).clamp(max=1.0)  # the smallest eps it withstood
    best, sign, forwards = ray_search(model, x[todo.to(x.device)], y[todo.to(x.device)], queries=queries,
                                      stop_at=smallest.to(x.device))
    best, sign = best.cpu(), sign.cpu()
    for k, e in enumerate(eps):
        hit = correct[todo, k] & (best <= e)
        correct[todo[hit], k] = False
        if examples is not None and hit.any():
            examples[k, todo[hit]] = (x[todo[hit].to(x.device)].cpu() + best[hit].view(-1, 1, 1, 1) * sign[hit]).clamp(0, 1)
    return forwards
