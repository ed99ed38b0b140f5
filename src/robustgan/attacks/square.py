"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020), L-inf: gradient-free random search
on the margin loss, the part of AutoAttack that finds what gradients miss (a thresholding
first layer, a shattered gradient). L-inf here; L2 (Sec. 3.2) with ``norm="l2"``, its start and
its candidates from ``square_l2``.

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
from robustgan.attacks.square_l2 import l2_candidate, l2_side, l2_start, tail_table
from robustgan.attacks.threat import attack_mode, ball, check_eps, get_norm, point_seed

P_INIT = 0.8
QUERIES = 5000  # AutoAttack's budget
CHUNK = 100  # queries whose draws one per-point generator makes at once
# (fraction of the budget after which p halves): the official schedule, at 10000 queries 10, 50, ...
P_HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


def p_fraction(query: int, queries: int, p_init: float = P_INIT) -> float:
    """The fraction of pixels a window covers at ``query`` of ``queries`` (``p_selection``)."""
    halvings = sum(query > f * queries for f in P_HALVINGS)
    return p_init / 2 ** halvings


def _generator(seed: int, point: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(point_seed(seed, stream, point))


def _draws(ids: list[int], chunks: list[int], seed: int, width: int) -> torch.Tensor:
    """(n, CHUNK, width) uniforms: queries [chunk * CHUNK, (chunk + 1) * CHUNK) of each point."""
    return torch.stack([torch.rand(CHUNK, width, generator=_generator(seed, i, chunk + 1))
                        for i, chunk in zip(ids, chunks)])


def square_init(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, seed: int,
                ids: torch.Tensor, start: torch.Tensor | None = None, warm: torch.Tensor | None = None,
                norm: str = "linf"):
    """L-inf: vertical stripes, x + eps * (one random sign per channel and column), in the box;
    L2: ``square_l2.l2_start``; eps (n,) one per point. The rows ``warm`` (n,) bool start at
    ``start`` instead (a point of their ball, e.g. a fooling example from a larger ball, scaled).
    Returns (x_init, logits)."""
    n, c, _, w = x.shape
    if norm == "l2":
        x_init = l2_start(x, eps, [_generator(seed, i, 0) for i in ids.tolist()])
    else:
        signs = torch.stack([torch.randint(0, 2, (c, 1, w), generator=_generator(seed, i, 0)) for i in ids.tolist()])
        lo, hi = ball(x, eps)
        x_init = torch.max(torch.min(x + eps.view(-1, 1, 1, 1) * (2 * signs.to(x) - 1), hi), lo)
    if warm is not None:
        x_init = torch.where(warm[:, None, None, None], get_norm(norm).project(start, x, eps), x_init)
    with torch.no_grad():
        return x_init, model(x_init).float()


class Finished(NamedTuple):
    points: torch.Tensor  # (k,) indices into the search's x
    fooled: torch.Tensor  # (k,) bool
    x_best: torch.Tensor  # (k, C, H, W): the fooling example, else the best corner found
    margin: torch.Tensor  # (k,) its margin max_{j != y} z_j - z_y (>= 0: misclassified)


class SquareSearch:
    """Square probes side by side in one batch, each at its own query (x: (N, C, H, W) in
    [0, 1], the model in eval mode). ``add`` starts probes (a point, its eps, its draws'
    stream, its budget); ``step`` runs one query of every live probe (one forward pass for all)
    and returns the probes that finished: fooled, out of budget, or given up by ``give_up``
    ((query, fraction) pairs: stop where the margin is still below that fraction of the probe's
    ``reference`` margin). A caller that chains probes per point starts each new one as the last
    ends, so points at different queries share every forward pass. Window sizes follow the
    ``queries`` schedule (``p_fraction``); draws come from (seed, stream, query) only. ``norm``:
    the threat model ("linf", or "l2": Sec. 3.2's windows, ``square_l2``)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, queries: int, seed: int,
                 p_init: float = P_INIT, give_up: tuple[tuple[int, float], ...] = (), norm: str = "linf"):
        _, self.channels, h, w = x.shape
        self.model, self.x, self.y, self.seed, self.queries, self.forwards = model, x, y, seed, queries, 0
        self.norm = get_norm(norm).name
        self.width = (5 if self.norm == "l2" else 2) + self.channels  # uniforms per query: places (a transpose), signs
        self.tail = tail_table(max(h, w)).to(x.device, x.dtype)  # L2's ring weights
        if self.norm == "l2":
            sides = [l2_side(p_fraction(q, queries, p_init), h, w) for q in range(queries)]
        else:
            sides = [min(max(int(round(math.sqrt(p_fraction(q, queries, p_init) * h * w))), 1), h - 1)
                     for q in range(queries)]
        self.sides = torch.tensor(sides or [1], device=x.device)
        self.give_up = torch.zeros(queries + 1, device=x.device)  # the fraction checked after each query, 0: none
        for query, fraction in give_up:
            if query <= queries:
                self.give_up[query] = fraction
        self.grid_h, self.grid_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        self.live: dict[str, torch.Tensor] | None = None  # the live probes' tensors, one row each
        self.done: list[Finished] = []
        self.refill_in = 0  # queries until some live probe needs its next CHUNK of draws

    def __bool__(self) -> bool:
        return self.live is not None or bool(self.done)

    def add(self, points: torch.Tensor, eps: torch.Tensor, streams: torch.Tensor, budget: torch.Tensor,
            start: torch.Tensor | None = None, warm: torch.Tensor | None = None,
            reference: torch.Tensor | None = None) -> None:
        """Start a probe on each of ``points`` (k,) with its eps (k,), draws' stream (k,), budget
        of queries (k,; at most the schedule's ``queries``), and, for the ``warm`` rows, its start
        (k, C, H, W) instead of Square's stripes; ``reference`` (k,) is the margin ``give_up``
        compares with."""
        if not len(points):
            return
        device = self.x.device
        points, eps, budget = points.to(device), eps.to(device, self.x.dtype), budget.to(device).clamp(max=self.queries)
        x, y = self.x[points], self.y[points]
        x_init, logits = square_init(self.model, x, y, eps, self.seed, streams.cpu(), start, warm, self.norm)
        self.forwards += len(points)
        lo, hi = ball(x, eps)
        rows = dict(points=points, streams=streams.cpu(), x=x, y=y, eps=eps.view(-1, 1, 1, 1), lo=lo, hi=hi,
                    best=x_init, margin=margin(logits, y), fooled=logits.argmax(1) != y, budget=budget,
                    reference=torch.full_like(eps, -math.inf) if reference is None else reference.to(device),
                    query=torch.zeros_like(points), draws=torch.empty(len(points), CHUNK, self.width, device=device))
        self._leave(rows, rows["fooled"] | (budget <= 0))
        if len(rows["points"]):
            self.live = rows if self.live is None else {k: torch.cat([v, rows[k]]) for k, v in self.live.items()}
            self.refill_in = 0

    def step(self) -> Finished:
        """One query of every live probe (Alg. 1, lines 4-9): a candidate from the norm's sampling
        distribution (L-inf: ``_linf_candidate``; L2: ``square_l2.l2_candidate``), kept where the
        margin grew or the point is fooled."""
        if self.live is not None:
            self._query(self.live)
        done, self.done = self.done, []
        if not done:  # nothing finished at this query
            x = self.x[:0]
            return Finished(x.new_zeros(0, dtype=torch.long), x.new_zeros(0, dtype=torch.bool), x, x.new_zeros(0))
        return Finished(*(torch.cat(parts) for parts in zip(*done)))

    def _query(self, rows: dict[str, torch.Tensor]) -> None:
        query = rows["query"]
        if self.refill_in == 0:  # draws for the probes at the start of a CHUNK (checked once per CHUNK, or on a join)
            refill = (query % CHUNK == 0).nonzero()[:, 0]
            if len(refill):  # none where the probe that was due has finished
                streams, chunks = rows["streams"][refill.cpu()].tolist(), (query[refill] // CHUNK).tolist()
                rows["draws"][refill] = _draws(streams, chunks, self.seed, self.width).to(rows["draws"])
            self.refill_in = CHUNK - int((query % CHUNK).max())
        self.refill_in -= 1
        u = rows["draws"][torch.arange(len(query), device=query.device), query % CHUNK]  # (k, width)
        side = self.sides[query][:, None]  # (k, 1)
        if self.norm == "l2":
            candidate = l2_candidate(rows["x"], rows["best"], rows["eps"].view(-1), u, side, self.grid_h, self.grid_w,
                                     self.tail)
        else:
            candidate = self._linf_candidate(rows, u, side)
        with torch.no_grad():
            logits = self.model(candidate).float()
        self.forwards += len(query)
        new_margin = margin(logits, rows["y"])
        rows["fooled"] = logits.argmax(1) != rows["y"]
        better = (new_margin > rows["margin"]) | rows["fooled"]
        rows["best"] = torch.where(better[:, None, None, None], candidate, rows["best"])
        rows["margin"] = torch.where(better, new_margin, rows["margin"])
        rows["query"] = query = query + 1
        fraction = self.give_up[query]
        out = rows["fooled"] | (query >= rows["budget"]) | (
            (fraction > 0) & (rows["margin"] < fraction * rows["reference"]))
        if out.any():
            self._leave(rows, out)
            self.live = rows if len(rows["points"]) else None

    def _linf_candidate(self, rows: dict[str, torch.Tensor], u: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """Alg. 2: a window of side ``side`` (k, 1) at a random place set to a random corner of the
        ball (one sign per channel; the other corner where it already is that one)."""
        h, w = len(self.grid_h), len(self.grid_w)
        top, left = (u[:, :1] * (h - side)).long(), (u[:, 1:2] * (w - side)).long()
        window = (((self.grid_h >= top) & (self.grid_h < top + side))[:, :, None]
                  & ((self.grid_w >= left) & (self.grid_w < left + side))[:, None, :])[:, None]  # (k, 1, H, W)
        step = (2 * (u[:, 2:] < 0.5).to(rows["x"].dtype) - 1)[:, :, None, None] * rows["eps"]  # (k, C, 1, 1): a corner
        best, x, lo, hi = rows["best"], rows["x"], rows["lo"], rows["hi"]
        candidate = torch.where(window, torch.max(torch.min(x + step, hi), lo), best)
        same = ((candidate - best).abs() < 1e-7).flatten(1).all(1)  # the window is already that corner: take the other
        if same.any():
            flipped = torch.where(window, torch.max(torch.min(x - step, hi), lo), best)
            candidate = torch.where(same[:, None, None, None], flipped, candidate)
        return candidate

    def _leave(self, rows: dict[str, torch.Tensor], out: torch.Tensor) -> None:
        """Move the rows ``out`` of ``rows`` (in place) to the finished probes."""
        if out.any():
            self.done.append(Finished(rows["points"][out], rows["fooled"][out], rows["best"][out],
                                      rows["margin"][out]))
            keep = ~out
            for k, v in rows.items():
                rows[k] = v[keep.to(v.device)]


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = QUERIES,
           p_init: float = P_INIT, seed: int = 0, ids: torch.Tensor | None = None, norm: str = "linf") -> torch.Tensor:
    """Square Attack on a batch, every point up to ``queries`` forward passes: x_adv in the
    eps-ball of ``norm`` and [0, 1] (each point's first misclassified query, else its best)."""
    eps = check_eps(eps, norm)
    if eps == 0 or math.isinf(eps):
        return x.detach().clone()
    ids = torch.arange(len(x)) if ids is None else ids.cpu()
    x = x.detach()
    x_adv = x.clone()
    with attack_mode(model):
        search = SquareSearch(model, x, y, queries, seed, p_init, norm=norm)
        search.add(torch.arange(len(x)), torch.full((len(x),), eps, dtype=x.dtype), ids, torch.full((len(x),), queries))
        while search:
            done = search.step()
            x_adv[done.points] = done.x_best.to(x_adv)
    return x_adv


@register_attack("square", steps=QUERIES, key=("steps",), queries_only=True, norms=("linf", "l2"), help="Square Attack, gradient-free "
                 "(Andriushchenko et al. 2020), L-inf or L2; --steps or --queries: queries per point")
def _square(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return square(model, x, y, eps, queries=args.steps, seed=args.seed or 0, ids=args.ids, norm=args.norm)
