"""FGSM and PGD under the L-infinity norm, on pixels in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgan.attacks.threat import AttackError, attack_mode, ball, check_eps, check_images, loss_and_grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, check: bool = True) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf.

    x: (N, C, H, W) in [0, 1]; y: (N,) int64. Returns clip(x + eps * sign(grad), 0, 1).
    The model runs in eval mode with frozen parameters; both are restored afterwards.
    ``check=False`` skips the input check (a host sync) for callers whose inputs are known good."""
    eps = check_eps(eps)
    if check:
        check_images(x, y)
    with attack_mode(model):
        x_adv = x.detach().clone().requires_grad_(True)
        _, grad = loss_and_grad(model, x_adv, y)
        lo, hi = ball(x.detach(), eps)
        return (x.detach() + (1.0 if math.isinf(eps) else eps) * grad.sign()).clamp_(lo, hi)


def _pgd_once(model, x, y, eps, steps, step_size, random_start) -> torch.Tensor:
    """One PGD run (Madry et al. 2018, paper 000 eq. 2): x <- Proj(x + a * sign(grad))."""
    lo, hi = ball(x, eps)
    x_adv = x.clone()
    if random_start and not math.isinf(eps):
        x_adv.add_(torch.empty_like(x).uniform_(-eps, eps)).clamp_(lo, hi)
    x_adv.requires_grad_(True)
    for _ in range(steps):
        _, grad = loss_and_grad(model, x_adv, y)
        with torch.no_grad():  # sign, step and projection in place on the leaf
            x_adv.add_(grad.sign_(), alpha=step_size).clamp_(lo, hi)
    return x_adv.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        random_start: bool = True, restarts: int = 1, *, check: bool = True) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018), L-inf, cross-entropy loss.

    x: (N, C, H, W) in [0, 1]; y: (N,) int64; eps in pixel scale, ``float('inf')`` for the
    unbounded attack (only the [0, 1] box is kept). With ``restarts > 1`` each sample keeps
    its worst case over the restarts: misclassified beats correct, then higher loss wins.
    The model runs in eval mode with frozen parameters; both are restored afterwards.
    Returns x_adv with |x_adv - x|_inf <= eps and x_adv in [0, 1]. ``check=False`` skips
    the input check (one host sync): the training loop's batches are known good."""
    eps = check_eps(eps)
    if check:
        check_images(x, y)
    if int(steps) <= 0:
        raise AttackError(f"PGD steps must be positive, got {steps}")
    if not step_size > 0:
        raise AttackError(f"PGD step size must be positive, got {step_size}")
    if int(restarts) <= 0:
        raise AttackError(f"PGD restarts must be positive, got {restarts}")
    x = x.detach()
    with attack_mode(model):
        best, best_fooled, best_loss = None, None, None
        for _ in range(int(restarts)):
            x_adv = _pgd_once(model, x, y, eps, int(steps), float(step_size), random_start)
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv).float()
                loss = F.cross_entropy(logits, y, reduction="none")
                fooled = logits.argmax(1) != y
            if best is None:
                best, best_fooled, best_loss = x_adv, fooled, loss
                continue
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better[:, None, None, None], x_adv, best)
            best_fooled, best_loss = best_fooled | fooled, torch.where(better, loss, best_loss)
        return best
