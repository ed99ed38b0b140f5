"""What the threat model itself allows: the highest accuracy any classifier can have at an eps,
from the constant 0.5 image (the ``bound`` check, ``checks.check_bound``; docs/evaluation.md,
"The L2 threat model", states the rule)."""

from __future__ import annotations

import torch

from robustgan.attacks import get_norm

BOUND_EPS = 0.5  # L-inf: every [0, 1] image lies within 0.5 of the constant 0.5 image


def bound_eps(norm: str, x: torch.Tensor) -> float:
    """The eps at which every [0, 1] image's ball holds the constant 0.5 image: 0.5 in L-inf,
    0.5 sqrt(C H W) in L2."""
    return BOUND_EPS * get_norm(norm).unbounded(x)


def accuracy_bound(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, classes: int) -> float:
    """The highest accuracy any classifier can have at ``eps``: a point whose ball holds the
    constant 0.5 image c (||x_i - c|| <= eps) is robust only if f(c) = y_i, and c gets one class,
    so of those points at most the largest class count is robust; the others may all be. In
    L-inf at eps >= 0.5 every point's ball holds c: the bound is the largest class share. x uint8
    or [0, 1] (n, C, H, W), y (n,)."""
    if not len(y):
        return 0.0
    images = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    inside = get_norm(norm).size(images - 0.5).cpu() <= eps + 1e-6
    most = torch.bincount(y.cpu()[inside], minlength=classes).max().item() if inside.any() else 0
    return (int((~inside).sum()) + most) / len(y)
