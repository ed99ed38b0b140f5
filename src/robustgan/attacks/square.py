"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020), L-inf: gradient-free random search
on the margin loss, the part of AutoAttack that finds what gradients miss (a thresholding
first layer, a shattered gradient).

Alg. 1 with the L-inf sampling distribution of Alg. 2: start at vertical stripes of +-eps (one
sign per channel and column); at query i change one square window of side
s = round(sqrt(p_i * H * W)) to a random corner of the ball (one sign per channel), and keep
the change if the margin max_{j != y} z_j - z_y grew. p_i halves at fixed fractions of the
budget from p_init = 0.8 (the official ``p_selection``, as AutoAttack runs it). A point stops
once misclassified.

Random draws are a function of (seed, the point's id, the query number), never of the batch:
a sharded or pruned run draws what one process draws. The id is the point's test-set index, or
a stream the caller derives from it (the ensemble's stage: the index, the eps, warm or fresh).
x: (N, C, H, W) in [0, 1]."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from robustgan.attacks.apgd import margin
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import attack_mode, ball, check_eps

P_INIT = 0.8
QUERIES = 5000  # AutoAttack's budget
CHUNK = 100  # queries whose draws one per-point generator makes at once
# (fraction of the budget after which p halves): the official schedule, at 10000 queries 10, 50, ...
P_HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


class SquareState(NamedTuple):
    x_best: torch.Tensor  # (n, C, H, W): each point's best corner of the ball so far
    margin: torch.Tensor  # (n,) its margin (>= 0: misclassified)
    fooled: torch.Tensor  # (n,) bool


def p_fraction(query: int, queries: int, p_init: float = P_INIT) -> float:
    """The fraction of pixels a window covers at ``query`` of ``queries`` (``p_selection``)."""
    halvings = sum(query > f * queries for f in P_HALVINGS)
    return p_init / 2 ** halvings


def _generator(seed: int, point: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 10_000_019 + point) % (1 << 63))


def _draws(ids: torch.Tensor, seed: int, chunk: int, width: int) -> torch.Tensor:
    """(n, CHUNK, width) uniforms for queries [chunk * CHUNK, (chunk + 1) * CHUNK) of each point."""
    return torch.stack([torch.rand(CHUNK, width, generator=_generator(seed, i, chunk + 1)) for i in ids.tolist()])


def square_init(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, seed: int,
                ids: torch.Tensor, start: torch.Tensor | None = None, warm: torch.Tensor | None = None) -> SquareState:
    """Vertical stripes: x + eps * (one random sign per channel and column), in the box; eps
    (n,) one per point. The rows ``warm`` (n,) bool start at ``start`` instead (a point of
    their ball, e.g. a fooling example from a larger ball, scaled)."""
    n, c, _, w = x.shape
    signs = torch.stack([torch.randint(0, 2, (c, 1, w), generator=_generator(seed, i, 0)) for i in ids.tolist()])
    lo, hi = ball(x, eps)
    x_best = torch.max(torch.min(x + eps.view(-1, 1, 1, 1) * (2 * signs.to(x) - 1), hi), lo)
    if warm is not None:
        x_best = torch.where(warm[:, None, None, None], torch.max(torch.min(start, hi), lo), x_best)
    with torch.no_grad():
        logits = model(x_best).float()
    return SquareState(x_best, margin(logits, y), logits.argmax(1) != y)


def square_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, state: SquareState,
                 rows: torch.Tensor, first: int, last: int, queries: int, seed: int, ids: torch.Tensor,
                 p_init: float = P_INIT) -> int:
    """Queries ``first``..``last - 1`` (of a ``queries`` budget) on the points ``rows`` of
    ``state``, updated in place; eps (n,) one per point. Returns the forward passes spent (one
    per live point and query). The live points' tensors are gathered once and again only when
    one is fooled (the hot loop indexes nothing else)."""
    n, c, h, w = x.shape
    grid_h, grid_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    forwards, draws, live = 0, None, None
    for query in range(first, last):
        if live is None:  # gather the points still to attack
            alive = ~state.fooled[rows]
            live, at = rows[alive], alive.nonzero()[:, 0]  # at: their positions in ``rows`` (the draws')
            if not len(live):
                break
            x_live, y_live, eps_live = x[live], y[live], eps[live].view(-1, 1, 1, 1)
            lo, hi = ball(x_live, eps[live])
            best, best_margin = state.x_best[live], state.margin[live]
        if draws is None or query % CHUNK == 0:
            draws = _draws(ids[rows.cpu()], seed, query // CHUNK, 2 + c).to(x.device)  # (len(rows), CHUNK, 2 + c)
        u = draws[at, query % CHUNK]  # (live, 2 + c)
        side = min(max(int(round(math.sqrt(p_fraction(query, queries, p_init) * h * w))), 1), h - 1)
        top = (u[:, 0] * (h - side)).long()[:, None]
        left = (u[:, 1] * (w - side)).long()[:, None]
        window = (((grid_h >= top) & (grid_h < top + side))[:, :, None]
                  & ((grid_w >= left) & (grid_w < left + side))[:, None, :])[:, None]  # (live, 1, H, W)
        step = (2 * (u[:, 2:] < 0.5).to(x.dtype) - 1)[:, :, None, None] * eps_live  # (live, C, 1, 1): a corner
        candidate = torch.where(window, torch.max(torch.min(x_live + step, hi), lo), best)
        same = ((candidate - best).abs() < 1e-7).flatten(1).all(1)  # the window is already that corner: take the other
        if same.any():
            flipped = torch.where(window, torch.max(torch.min(x_live - step, hi), lo), best)
            candidate = torch.where(same[:, None, None, None], flipped, candidate)
        with torch.no_grad():
            logits = model(candidate).float()
        forwards += len(live)
        new_margin = margin(logits, y_live)
        better = new_margin > best_margin
        best = torch.where(better[:, None, None, None], candidate, best)
        best_margin = torch.where(better, new_margin, best_margin)
        hit = logits.argmax(1) != y_live
        if hit.any() or query == last - 1:
            state.x_best[live], state.margin[live] = best, best_margin
            state.fooled[live] |= hit
            live = None
    return forwards


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = QUERIES,
           p_init: float = P_INIT, seed: int = 0, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Square Attack on a batch, every point up to ``queries`` forward passes: x_adv in the
    eps-ball and [0, 1] (each point's first misclassified query, else its best)."""
    eps = check_eps(eps)
    if eps == 0 or math.isinf(eps):
        return x.detach().clone()
    ids = torch.arange(len(x)) if ids is None else ids.cpu()
    per_point = torch.full((len(x),), eps, device=x.device, dtype=x.dtype)
    with attack_mode(model):
        x = x.detach()
        state = square_init(model, x, y, per_point, seed, ids)
        square_steps(model, x, y, per_point, state, torch.arange(len(x), device=x.device), 0, queries, queries, seed,
                     ids, p_init)
    return state.x_best


@register_attack("square", steps=QUERIES, key=("steps",), help="Square Attack, gradient-free (Andriushchenko et al. "
                 "2020); --steps: queries per point")
def _square(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return square(model, x, y, eps, queries=args.steps, seed=args.seed or 0, ids=args.ids)
