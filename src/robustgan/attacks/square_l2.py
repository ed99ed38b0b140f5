"""Square Attack's L2 sampling distribution (Andriushchenko et al. 2020, Sec. 3.2, Alg. 3),
written from the paper: the perturbation is a sum of "pseudo-Gaussian" patterns (nested squares
whose weights fall off as 1 / (r + 1)^2 with the ring r) and every query moves the mass of one
window into another, so the perturbation keeps L2 norm eps. ``square.SquareSearch`` runs the
search; this module gives its start and its candidates in L2. The update's pattern is the
start's two halves of opposite sign (the reference code's ``meta_pseudo_gaussian_pert``), in
window 1, transposed at random.

x: (k, C, H, W) in [0, 1]; every perturbation is scaled to L2 norm eps and clipped to the box
(clipping moves no pixel away from x's side, so the point stays in the ball)."""

from __future__ import annotations

import torch

from robustgan.attacks.threat import l2_sizes

MIN_SIDE = 3  # the smallest window (odd sides: a window has a centre pixel)


def l2_side(fraction: float, h: int, w: int) -> int:
    """The window side at a schedule fraction p (``square.p_fraction``): sqrt(p H W), at least
    ``MIN_SIDE``, odd (a window has a centre pixel), and no larger than the image."""
    side = max(int(round((fraction * h * w) ** 0.5)), MIN_SIDE)
    side = min(side + 1 - side % 2, min(h, w))
    return side if side % 2 else side - 1


def tail_table(length: int) -> torch.Tensor:
    """tail[r] = sum_{c >= r} 1 / (c + 1)^2 over c < length: the weight of a pixel in ring r of
    nested squares that reach ring length - 1."""
    weights = 1 / (torch.arange(length, dtype=torch.float32) + 1) ** 2
    return torch.cat([weights.flip(0).cumsum(0).flip(0), torch.zeros(1)])


def rings(h: int, w: int) -> torch.Tensor:
    """(h, w) of unit L2 norm: nested rectangles centred at (h // 2, w // 2), the pixels of ring r
    (Chebyshev distance r from the centre) weighted sum_{c=r}^{R} 1 / (c + 1)^2 (R the outer ring)."""
    i = (torch.arange(h) - h // 2).abs()[:, None]
    j = (torch.arange(w) - w // 2).abs()[None, :]
    pattern = tail_table(max(h // 2, w // 2) + 1)[torch.maximum(i, j)]
    return pattern / pattern.norm().clamp(min=1e-12)


def _tile(side: int) -> torch.Tensor:
    """(side, side): the start's pattern, rings of opposite sign in the top and bottom halves."""
    tile = torch.cat([rings(side // 2, side), -rings(side - side // 2, side)])
    return tile / tile.norm().clamp(min=1e-12)


def l2_start(x: torch.Tensor, eps: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Square's L2 start: the image cut into tiles of side H // 5 (a margin left at the borders),
    each tile a ``_tile`` pattern, transposed or not and with one sign per channel at random,
    the whole scaled to L2 norm eps (``eps`` (k,)) and clipped to the box. Draws: one generator
    per point."""
    k, c, h, w = x.shape
    side = max(h // 5, 2)
    rows, cols = h // side, w // side
    top0, left0 = (h - rows * side) // 2, (w - cols * side) // 2
    signs = torch.stack([torch.randint(0, 2, (c, rows, cols), generator=g) for g in generators]).to(x) * 2 - 1
    flips = torch.stack([torch.randint(0, 2, (rows, cols), generator=g) for g in generators]).bool().to(x.device)
    tile = _tile(side).to(x)
    delta = torch.zeros_like(x)
    for a in range(rows):
        for b in range(cols):
            pattern = torch.where(flips[:, a, b, None, None], tile.t(), tile)[:, None]  # (k, 1, side, side)
            top, left = top0 + a * side, left0 + b * side
            delta[:, :, top:top + side, left:left + side] = signs[:, :, a, b, None, None] * pattern
    return _scaled(x, delta, eps)


def _scaled(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x + delta scaled to L2 norm eps (k,), clipped to the box."""
    size = l2_sizes(delta).to(x.dtype).clamp(min=1e-12).view(-1, 1, 1, 1)
    return (x + delta * (eps.view(-1, 1, 1, 1) / size)).clamp_(0, 1)


def _channel_norms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum((2, 3), keepdim=True).sqrt()  # (k, C, 1, 1)


def _window(top: torch.Tensor, left: torch.Tensor, side: torch.Tensor, grid_h: torch.Tensor, grid_w: torch.Tensor):
    """(k, 1, H, W) bool: each row's window of side ``side`` (k, 1) at (top, left) (k, 1)."""
    return (((grid_h >= top) & (grid_h < top + side))[:, :, None]
            & ((grid_w >= left) & (grid_w < left + side))[:, None, :])[:, None]


def _half_rings(rows: torch.Tensor, cols: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                tail: torch.Tensor) -> torch.Tensor:
    """(k, H, W): ``rings(height, width)`` per row, at window coordinates (rows (k, H, 1), cols
    (k, 1, W), 0 at the window's corner), 0 outside [0, height) x [0, width), unit norm per row."""
    inside = (rows >= 0) & (rows < height[:, :, None]) & (cols >= 0) & (cols < width[:, :, None])
    distance = torch.maximum((rows - height[:, :, None] // 2).abs(), (cols - width[:, :, None] // 2).abs())
    outer = torch.maximum(height, width)[:, :, None] // 2 + 1  # the ring after the outermost
    values = tail[distance.clamp(max=len(tail) - 1)] - tail[outer.clamp(max=len(tail) - 1)]
    values = torch.where(inside, values, torch.zeros_like(values))
    return values / values.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def _tile_at(top, left, side, flip, grid_h, grid_w, tail) -> torch.Tensor:
    """(k, 1, H, W): ``_tile(side)`` per row in its window, transposed where ``flip`` (k, 1)."""
    rows = (grid_h[None, :] - top)[:, :, None]  # (k, H, 1) window coordinates
    cols = (grid_w[None, :] - left)[:, None, :]  # (k, 1, W)
    rows, cols = torch.where(flip[:, :, None], cols.expand(-1, rows.shape[1], -1), rows), \
        torch.where(flip[:, :, None], rows.expand(-1, -1, cols.shape[2]), cols)  # transposed: swap the roles
    half = side // 2
    upper = _half_rings(rows, cols, half, side, tail)
    lower = _half_rings(rows - half[:, :, None], cols, side - half, side, tail)
    tile = upper - lower
    return (tile / tile.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None])[:, None]


def l2_update(delta: torch.Tensor, eps: torch.Tensor, u: torch.Tensor, side: torch.Tensor, grid_h: torch.Tensor,
              grid_w: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """One query's new perturbation per row (Alg. 3), before it is scaled to norm eps: window 1 at
    a random place gets a fresh ``_tile`` pattern (transposed or not, a random sign per channel)
    added to its normalized old content; window 2 is set to zero and its mass moved into window 1,
    which gets, per channel, (eps^2 - ||delta||^2) / C (the budget left unused) plus that channel's
    squared norm over both windows, so the image keeps norm eps where it had it. delta (k, C, H, W);
    ``u`` (k, 5 + C) the query's uniforms (two places, a transpose, C signs); ``side`` (k, 1);
    eps (k,); ``tail`` = ``tail_table(max(H, W))``."""
    h, w = len(grid_h), len(grid_w)
    place = lambda a, b: ((u[:, a:a + 1] * (h - side + 1)).long().clamp(max=h - side),  # noqa: E731
                          (u[:, b:b + 1] * (w - side + 1)).long().clamp(max=w - side))
    (top, left), (top2, left2) = place(0, 1), place(2, 3)
    first = _window(top, left, side, grid_h, grid_w)
    both = first | _window(top2, left2, side, grid_h, grid_w)
    pattern = _tile_at(top, left, side, u[:, 4:5] < 0.5, grid_h, grid_w, tail.to(delta.device))
    signs = (2 * (u[:, 5:] < 0.5).to(delta.dtype) - 1)[:, :, None, None]  # (k, C, 1, 1)
    old = delta * first
    fresh = pattern.to(delta.dtype) * signs + old / (_channel_norms(old) + 1e-12)
    unused = (eps.view(-1, 1, 1, 1).to(delta.dtype) ** 2 - l2_sizes(delta).to(delta.dtype).view(-1, 1, 1, 1) ** 2)
    budget = unused.clamp(min=0) / delta.shape[1] + _channel_norms(delta * both) ** 2  # (k, C, 1, 1)
    fresh = fresh / (_channel_norms(fresh) + 1e-12) * budget.sqrt()
    return torch.where(first, fresh, torch.where(both, torch.zeros_like(delta), delta))


def l2_candidate(x: torch.Tensor, best: torch.Tensor, eps: torch.Tensor, u: torch.Tensor, side: torch.Tensor,
                 grid_h: torch.Tensor, grid_w: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """One query's candidate per row: ``l2_update`` of best - x, scaled to L2 norm eps (k,) and
    clipped to the box."""
    return _scaled(x, l2_update(best - x, eps, u, side, grid_h, grid_w, tail), eps)
