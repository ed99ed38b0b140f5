"""FGSM and PGD under the L-infinity norm, on pixels in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgan.attacks.threat import AttackError, attack_mode, ball, check_eps, check_images, loss_and_grad, sample_noise


def _keep_better(best, fooled, loss, x_new, fooled_new, loss_new):
    """Per sample, the better of two points: a misclassified one wins, and among points
    that are both misclassified the earlier (``best``) one; otherwise the higher loss."""
    better = (fooled_new & ~fooled) | (~fooled & ~fooled_new & (loss_new > loss))
    return (torch.where(better[:, None, None, None], x_new, best), fooled | fooled_new,
            torch.where(better, loss_new, loss))


def _score(model, x_adv, y):
    """(misclassified, cross-entropy) per sample, without gradients."""
    with torch.no_grad():
        logits = model(x_adv).float()
        return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, check: bool = True) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf.

    x: (N, C, H, W) in [0, 1]; y: (N,) int64. Returns clip(x + eps * sign(grad), 0, 1), or
    x itself for the samples x already fools or where the step lowered the loss (the best
    of the two iterates, as for PGD). The model runs in eval mode with frozen parameters;
    both are restored afterwards. ``check=False`` skips the input check (a host sync)."""
    eps = check_eps(eps)
    if check:
        check_images(x, y)
    with attack_mode(model):
        x = x.detach()
        x_leaf = x.clone().requires_grad_(True)
        loss, grad, logits = loss_and_grad(model, x_leaf, y, logits=True)
        lo, hi = ball(x, eps)
        x_adv = (x + (1.0 if math.isinf(eps) else eps) * grad.sign()).clamp_(lo, hi)
        return _keep_better(x, logits.argmax(1) != y, loss, x_adv, *_score(model, x_adv, y))[0]


def _pgd_once(model, x, y, eps, steps, step_size, random_start, best, noise=None) -> tuple[torch.Tensor, ...]:
    """One PGD run (Madry et al. 2018, paper 000 eq. 2): x <- Proj(x + a * sign(grad)).
    With ``best``, returns (each sample's first misclassified iterate, else its highest-loss
    one; misclassified; loss), else (the last iterate, None, None)."""
    lo, hi = ball(x, eps)
    x_adv = x.clone()
    if random_start and not math.isinf(eps):
        noise = torch.empty_like(x).uniform_(-1, 1) if noise is None else noise
        x_adv.add_(noise, alpha=eps).clamp_(lo, hi)
    x_adv.requires_grad_(True)
    keep = None
    for _ in range(steps):
        loss, grad, logits = loss_and_grad(model, x_adv, y, logits=True)
        if best:  # the iterate the gradient was taken at
            point = (x_adv.detach().clone(), logits.argmax(1) != y, loss)
            keep = point if keep is None else _keep_better(*keep, *point)
        with torch.no_grad():  # sign, step and projection in place on the leaf
            x_adv.add_(grad.sign_(), alpha=step_size).clamp_(lo, hi)
    if not best:
        return x_adv.detach(), None, None
    return _keep_better(*keep, x_adv.detach(), *_score(model, x_adv.detach(), y))


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        random_start: bool = True, restarts: int = 1, *, best: bool = True, seed: int | None = None,
        ids: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018), L-inf, cross-entropy loss.

    x: (N, C, H, W) in [0, 1]; y: (N,) int64; eps in pixel scale, ``float('inf')`` for the
    unbounded attack (only the [0, 1] box is kept). Each sample keeps its best iterate (the
    first misclassified, else the highest loss) over all steps and restarts; ``best=False``
    returns the last iterate of one start instead (Madry et al.'s training attack, one
    forward pass cheaper per step). The model runs in eval mode with frozen parameters;
    both are restored afterwards. Returns x_adv with |x_adv - x|_inf <= eps and x_adv in
    [0, 1]. Random starts come from torch's global generator, or with ``seed`` from one
    stream per sample (its test-set index in ``ids``), independent of batch and shard.
    ``check=False`` skips the input check (one host sync)."""
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
        keep = None
        for r in range(int(restarts)):
            noise = None if seed is None else sample_noise(x, seed, ids, stream=r)
            run = _pgd_once(model, x, y, eps, int(steps), float(step_size), random_start, best or restarts > 1, noise)
            if keep is None and restarts == 1:
                return run[0]
            keep = run if keep is None else _keep_better(*keep, *run)
        return keep[0]
