"""Accuracy of a model under an attack, batched over a test set on the device: the one
batch loop every evaluation (held-out numbers while training, curves, checks) goes through."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.threat import AttackError, check_images

ATTACK_NAMES = ("fgsm", "pgd", "autoattack")  # what `--attack` accepts; "none" means clean accuracy


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al.); 0.01 for the unbounded attack."""
    return 0.01 if math.isinf(eps) else max(2.5 * eps / steps, 1e-6)


def attack_batch(model, x, y, attack: str, eps: float, steps: int = 10, step_size: float | None = None,
                 restarts: int = 1, num_classes: int = 10, check: bool = True) -> torch.Tensor:
    """Adversarial images for one batch (x in [0, 1]); ``attack='none'`` (or eps 0) returns x."""
    if attack == "none" or eps == 0:
        return x
    if attack == "fgsm":
        return fgsm(model, x, y, eps, check=check)
    if attack == "pgd":
        return pgd(model, x, y, eps, steps, step_size or default_step_size(eps, steps), True, restarts, check=check)
    if attack == "autoattack":
        return autoattack(model, x, y, eps, num_classes=num_classes)
    raise AttackError(f"unknown attack {attack!r}; choose one of none, {', '.join(ATTACK_NAMES)}")


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd", eps: float = 0.0,
                    steps: int = 10, step_size: float | None = None, restarts: int = 1, batch_size: int = 256,
                    device="cpu", num_classes: int = 10, progress=None, task=None, channels_last: bool = False,
                    source: nn.Module | None = None) -> float:
    """Accuracy of ``model`` (eval mode) on x (uint8 or float in [0, 1]) under ``attack``.

    The attack runs on ``source`` when given (a transfer or gray-box attack: examples made on
    one model, scored on another), else on ``model``. The whole set moves to ``device``
    once; batches are attacked there. ``progress`` / ``task`` (a rich Progress and task id)
    advance by the batch size. ``channels_last`` converts the model (in place) and the
    batches to that memory format: faster convolutions, same numbers up to float rounding."""
    model.eval()
    source = model if source is None else source.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    if x.dtype != torch.uint8:
        check_images(x, y)  # once for the whole set; the batches below skip it
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size]
        xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[start:start + batch_size]
        x_adv = attack_batch(source, xb, yb, attack, eps, steps, step_size, restarts, num_classes, check=False)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == yb).sum()
        if progress is not None:
            progress.advance(task, len(yb))
    return correct.item() / max(1, len(y))
