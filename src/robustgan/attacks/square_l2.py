"""Square Attack's L2 sampling distribution (Andriushchenko et al. 2020, Sec. 3.2, Alg. 3),
written from the paper: the perturbation is a sum of "pseudo-Gaussian" patterns (nested squares
whose weights fall off as 1 / (r + 1)^2 with the ring r) and every query moves the mass of one
window into another, so the perturbation keeps L2 norm eps. ``square.SquareSearch`` runs the
search; this module gives its start and its candidates in L2.

x: (k, C, H, W) in [0, 1]; every perturbation is scaled to L2 norm eps and clipped to the box
(clipping moves no pixel away from x's side, so the point stays in the ball)."""

from __future__ import annotations

import torch

from robustgan.attacks.threat import l2_sizes

MIN_SIDE = 3  # the smallest window (odd sides: a window has a centre pixel)


def l2_side(fraction: float, h: int, w: int) -> int:
    """The window side at a schedule fraction p (``square.p_fraction``): sqrt(p H W), at least
    ``MIN_SIDE``, odd, and no larger than the image."""
    side = max(int(round((fraction * h * w) ** 0.5)), MIN_SIDE)
    side += 1 - side % 2
    return min(side, min(h, w))


def _tail(length: int) -> torch.Tensor:
    """tail[r] = sum_{c >= r} 1 / (c + 1)^2 over c < length: the weight of a pixel in ring r of
    nested squares that reach ring length - 1."""
    weights = 1 / (torch.arange(length, dtype=torch.float32) + 1) ** 2
    return torch.cat([weights.flip(0).cumsum(0).flip(0), torch.zeros(1)])


def rings(h: int, w: int) -> torch.Tensor:
    """(h, w) of unit L2 norm: nested rectangles centred at (h // 2, w // 2), the pixels of ring r
    (Chebyshev distance r from the centre) weighted sum_{c=r}^{R} 1 / (c + 1)^2 (R the outer ring)."""
    i = (torch.arange(h) - h // 2).abs()[:, None]
    j = (torch.arange(w) - w // 2).abs()[None, :]
    pattern = _tail(max(h // 2, w // 2) + 1)[torch.maximum(i, j)]
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


def l2_candidate(x: torch.Tensor, best: torch.Tensor, eps: torch.Tensor, u: torch.Tensor, side: torch.Tensor,
                 grid_h: torch.Tensor, grid_w: torch.Tensor) -> torch.Tensor:
    """One query's candidate per row (Alg. 3): window 1 at a random place gets a fresh ring
    pattern (a random sign per channel) added to its normalized old content, window 2's mass
    is moved into window 1 (window 2 set to zero), window 1 rescaled per channel so the image
    keeps its norm, and the whole perturbation scaled to L2 norm eps. ``u`` (k, 4 + C) are the
    query's uniforms (two places, C signs); ``side`` (k, 1) the window side; eps (k,)."""
    h, w = len(grid_h), len(grid_w)
    delta = best - x

    def window(top, left):  # (k, 1, H, W) bool, and the Chebyshev distance of each pixel to its centre
        centre_h, centre_w = top + side // 2, left + side // 2
        inside = (((grid_h >= top) & (grid_h < top + side))[:, :, None]
                  & ((grid_w >= left) & (grid_w < left + side))[:, None, :])[:, None]
        distance = torch.maximum((grid_h - centre_h).abs()[:, :, None], (grid_w - centre_w).abs()[:, None, :])
        return inside, distance[:, None]

    first, distance = window((u[:, :1] * (h - side + 1)).long().clamp(max=h - side),
                             (u[:, 1:2] * (w - side + 1)).long().clamp(max=w - side))
    second, _ = window((u[:, 2:3] * (h - side + 1)).long().clamp(max=h - side),
                       (u[:, 3:4] * (w - side + 1)).long().clamp(max=w - side))
    tail = _tail(max(h, w)).to(x)
    pattern = torch.where(first, tail[distance.clamp(max=len(tail) - 1)] - tail[(side // 2 + 1)[:, :, None, None]],
                          torch.zeros((), dtype=x.dtype, device=x.device))  # rings out to the window's edge
    pattern = pattern / l2_sizes(pattern).to(x.dtype).clamp(min=1e-12).view(-1, 1, 1, 1)
    signs = (2 * (u[:, 4:] < 0.5).to(x.dtype) - 1)[:, :, None, None]  # (k, C, 1, 1)
    old = delta * first
    fresh = pattern * signs + old / (_channel_norms(old) + 1e-12)
    room = (eps.view(-1, 1, 1, 1).to(x.dtype) ** 2 - _channel_norms(delta) ** 2).clamp(min=0) / x.shape[1]
    fresh = fresh / (_channel_norms(fresh) + 1e-12) * (room + _channel_norms(delta * (first | second)) ** 2).sqrt()
    delta = torch.where(first, fresh, torch.where(second, torch.zeros_like(delta), delta))
    return _scaled(x, delta, eps)
