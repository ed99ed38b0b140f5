"""The worst-case ensemble's gradient-free stage (docs/evaluation.md, "4. Square"): Square
(``attacks.square``) on the points every gradient attack left robust, spending its queries where
they can still pay."""

from __future__ import annotations

import math

import torch

from robustgan.attacks.square import square_init, square_steps

# A probe gives up on a point at query 500 if its margin is still above half its clean margin, at
# 1000 above a quarter, at 2000 above a tenth: on the tests' PGD-AT CNN, the planted thresholding
# model and both behind logits compressed to sign(z)|z|^0.25 (5000 queries, eps 0.1-0.3, 2290
# probes) the points Square fooled after a checkpoint had at most 0.12, 0.05 and 0.04 left there
# (benchmarks/square_give_up.py). Measured on Square's 5000-query schedule; a smaller budget
# reaches a checkpoint later in its schedule, and one under 500 queries never gives up.
GIVE_UP = ((500, 0.5), (1000, 0.25), (2000, 0.1))
RETRY = 0.5  # a fresh retry's queries (the first half of Square's schedule), where a warm start failed


def gradient_free_stage(model, x, y, ids, eps: list[float], correct: torch.Tensor, clean_margin: torch.Tensor,
                        queries: int, seed: int, examples: torch.Tensor | None = None) -> int:
    """Square on the points of ``correct`` (n, len(eps), CPU; updated in place, as
    ``examples``) still robust, from each point's largest robust eps downwards: first at the
    largest eps it withstood, from Square's own start; then, each time Square fools it, at the
    next smaller eps of the grid, starting from the fooling example scaled into the smaller ball
    (x + delta * eps_k / eps_k+1: Square's corners stay corners away from the [0, 1] box). Where
    such a warm start fails, a fresh start (other draws) tries the same eps for ``RETRY`` of the
    budget; where a fresh start fails, the point is taken as not fooled at smaller eps either.
    Each probe spends up to ``queries`` forward passes per point, fewer on a point it fools or
    gives up on (``GIVE_UP``, against ``clean_margin`` (n,)). Every decision is per point, with
    draws from (seed, the point's index, the eps, warm or fresh), so a batch or a shard gets
    what one process gets. Returns the forward passes spent."""
    grid = torch.tensor(eps)  # ascending: 0 first, inf last, if at all
    smallest = int((grid <= 0).sum())
    largest = int((grid < math.inf).sum()) - 1
    top = (correct.sum(1) - 1).clamp(max=largest)  # the largest finite eps each point withstood (correct is monotone)
    probe = torch.where(top >= smallest, top, torch.full_like(top, -1))
    start, warm = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    retry = torch.zeros_like(warm)
    forwards = 0
    while (active := probe >= 0).any():
        idx = active.nonzero()[:, 0]
        at = probe[idx]  # each point's eps index
        streams = (ids[idx] * len(eps) + at) * 2 + warm[idx]  # distinct per (point, eps, warm or fresh)
        fooled, x_adv, spent = _square_probe(
            model, x[idx], y[idx], grid[at].to(x.device, x.dtype), streams=streams, seed=seed, queries=queries,
            budget=torch.where(retry[idx], int(queries * RETRY), queries), start=start[idx],
            warm=warm[idx].to(x.device), reference=clean_margin[idx])
        forwards += spent
        for i, k, hit, example in zip(idx.tolist(), at.tolist(), fooled.cpu().tolist(), x_adv):
            if not hit:  # a warm start failed: retry fresh; a fresh start failed: done
                probe[i], retry[i], warm[i] = (k if warm[i] else -1), bool(warm[i]), False
                continue
            if examples is not None:
                examples[k:, i][correct[i, k:]] = example.cpu()
            correct[i, k:] = False
            if k > smallest:  # the next smaller eps, from this example scaled into its ball
                probe[i], retry[i], warm[i] = k - 1, False, True
                start[i] = x[i] + (example - x[i]) * float(grid[k - 1] / grid[k])
            else:
                probe[i], retry[i] = -1, False
    return forwards


def _square_probe(model, x, y, eps, *, streams, seed, queries, budget, start, warm, reference):
    """One Square run on a batch (eps one per point; the ``warm`` rows start from ``start``) on
    a schedule of ``queries``, each point stopping after its ``budget`` (n,) queries, or at a
    ``GIVE_UP`` checkpoint where its margin is still more than that fraction of ``reference``
    (its clean margin): (fooled, best examples, forward passes)."""
    state = square_init(model, x, y, eps, seed, streams, start, warm)
    rows, spent, done = torch.arange(len(x), device=x.device), len(x), 0
    give_up = dict(GIVE_UP)
    budget = budget.to(x.device)
    for query in sorted({*give_up, *budget.tolist(), queries}):
        if query > queries or not len(rows):
            break
        spent += square_steps(model, x, y, eps, state, rows, done, query, queries, seed, streams)
        done = query
        keep = ~state.fooled[rows] & (budget[rows] > query)
        if query in give_up:
            keep &= state.margin[rows] >= give_up[query] * reference[rows]
        rows = rows[keep]
    return state.fooled, state.x_best, spent
