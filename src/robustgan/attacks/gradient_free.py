"""The worst-case ensemble's gradient-free stage (docs/evaluation.md, "5. Square"): Square
(``attacks.square``) on the points every gradient attack left robust, spending its queries where
they can still pay."""

from __future__ import annotations

import math

import torch

from robustgan.attacks.square import SquareSearch

# Per norm, a probe gives up on a point whose margin is still above these fractions of its clean
# margin at these queries: about twice the most any probe Square fooled later had left there, on
# models built to break the rule (masked and partly masked gradients, bent margins;
# docs/evaluation.md, "Why the give-up fractions hold", benchmarks/square_give_up.py). In L2,
# Square closes a masked model's margins slowly, so its rule starts at query 2000. A budget under
# the first checkpoint never gives up.
GIVE_UP = {"linf": ((500, 0.3), (750, 0.1), (1000, 0.08), (1500, 0.05), (2000, 0.04)),
           "l2": ((2000, 0.4), (3000, 0.3))}
RETRY = 0.5  # a fresh retry's queries (the first half of Square's schedule), where a warm start failed


def gradient_free_stage(model, x, y, ids, eps: list[float], correct: torch.Tensor, clean_margin: torch.Tensor,
                        queries: int, seed: int, examples: torch.Tensor | None = None,
                        give_up: tuple[tuple[int, float], ...] | None = None, norm: str = "linf") -> int:
    """Square on the points of ``correct`` (n, len(eps), CPU; updated in place, as
    ``examples``) still robust, from each point's largest robust eps downwards: first at the
    largest eps it withstood, from Square's own start; then, each time Square fools it, at the
    next smaller eps of the grid, starting from the fooling example scaled into the smaller ball
    (x + delta * eps_k / eps_k+1: Square's corners stay corners away from the [0, 1] box). Where
    such a warm start fails, a fresh start (other draws) tries the same eps for ``RETRY`` of the
    budget; where a fresh start fails, the point is taken as not fooled at smaller eps either.
    Each probe spends up to ``queries`` forward passes per point, fewer on a point it fools or
    gives up on (``give_up``, None: ``GIVE_UP[norm]``, against ``clean_margin`` (n,)). The probes of all points run side
    by side (``SquareSearch``): a point's next probe starts as its last one ends. Every
    decision is per point, with draws from (seed, the point's index, the eps, warm or fresh), so
    a batch or a shard gets what one process gets. ``norm``: Square's threat model (L-inf or
    L2; a scaled example stays in the smaller ball in both). Returns the forward passes spent."""
    grid = torch.tensor(eps)  # ascending: 0 first, inf last, if at all
    smallest = int((grid <= 0).sum())
    largest = int((grid < math.inf).sum()) - 1
    # the eps index each point's probe runs at: first the largest finite eps it withstood (correct is monotone)
    at = (correct.sum(1) - 1).clamp(max=largest)
    start, warm = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    retry = torch.zeros_like(warm)
    give_up = GIVE_UP[norm] if give_up is None else give_up
    search = SquareSearch(model, x, y, queries, seed, give_up=give_up, norm=norm)

    def probe(points: torch.Tensor) -> None:  # start each point's probe at its ``at``, ``warm`` and ``retry``
        k = at[points]
        search.add(points, grid[k], (ids[points] * len(eps) + k) * 2 + warm[points],  # a stream per (point, eps, warm)
                   torch.where(retry[points], int(queries * RETRY), queries), start[points],
                   warm[points].to(x.device), clean_margin[points.to(x.device)])

    probe((at >= smallest).nonzero()[:, 0])
    while search:
        done, next_probes = search.step(), []
        for i, hit, example in zip(done.points.tolist(), done.fooled.tolist(), done.x_best):
            k = int(at[i])
            if not hit:  # a warm start failed: retry fresh; a fresh start failed: done
                if warm[i]:
                    retry[i], warm[i] = True, False
                    next_probes.append(i)
                continue
            if examples is not None:
                examples[k:, i][correct[i, k:]] = example.cpu()
            correct[i, k:] = False
            if k > smallest:  # the next smaller eps, from this example scaled into its ball
                at[i], retry[i], warm[i] = k - 1, False, True
                start[i] = x[i] + (example - x[i]) * float(grid[k - 1] / grid[k])
                next_probes.append(i)
        if next_probes:
            probe(torch.tensor(next_probes))
    return search.forwards
