"""Accuracy of a defended model under an attack, batched over a test set on the device."""

from __future__ import annotations

import math
import torch
import torch.nn as nn

from robustgan.attacks import autoattack, fgsm, pgd
from robustgan.attacks.threat import check_images
from robustgan.errors import RobustganError

ATTACKS = ("none", "fgsm", "pgd", "autoattack")


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al.); 0.01 for the unbounded attack."""
    return 0.01 if math.isinf(eps) else max(2.5 * eps / steps, 1e-6)


def attack_batch(model, x, y, attack: str, eps: float, steps: int = 10, step_size: float | None = None,
                 restarts: int = 1, num_classes: int = 10, check: bool = True) -> torch.Tensor:
    """Adversarial images for one batch (x in [0, 1]); ``attack='none'`` returns x."""
    if attack == "none" or eps == 0:
        return x
    if attack == "fgsm":
        return fgsm(model, x, y, eps, check=check)
    if attack == "pgd":
        return pgd(model, x, y, eps, steps, step_size or default_step_size(eps, steps), True, restarts, check=check)
    if attack == "autoattack":
        return autoattack(model, x, y, eps, num_classes=num_classes)
    raise RobustganError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd", eps: float = 0.0,
                    steps: int = 10, step_size: float | None = None, restarts: int = 1, batch_size: int = 256,
                    device="cpu", num_classes: int = 10, progress=None, task=None,
                    channels_last: bool = False) -> float:
    """Accuracy of ``model`` (eval mode) on x (uint8 or float in [0, 1]) under ``attack``.

    The whole set moves to ``device`` once; batches are attacked there. ``progress`` /
    ``task`` (a rich Progress and task id) advance by the batch size. ``channels_last``
    converts the model (in place) and the batches to that memory format: faster
    convolutions, same numbers up to float rounding."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x = x.to(device)
    y = y.to(device)
    if x.dtype != torch.uint8:
        check_images(x, y)  # once for the whole set; the batches below skip it
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size]
        xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[start:start + batch_size]
        x_adv = attack_batch(model, xb, yb, attack, eps, steps, step_size, restarts, num_classes, check=False)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == yb).sum()
        if progress is not None:
            progress.advance(task, len(yb))
    return correct.item() / max(1, len(y))


def evaluate_accuracy(model, x, y, eps_list, attack="pgd", **kw) -> dict:
    """{'clean': acc, eps: acc, ...} for every eps in ``eps_list``."""
    results = {"clean": robust_accuracy(model, x, y, attack="none", **kw)}
    for eps in eps_list:
        results[eps] = robust_accuracy(model, x, y, attack=attack, eps=eps, **kw)
    return results



def run_accuracy(run_dir, model, x, y, *, attack: str, eps: float = 0.0, steps: int = 10,
                 step_size: float | None = None, restarts: int = 1, seed: int = 0, cache=None, **kw) -> float:
    """``robust_accuracy`` through the run's evaluation cache (same settings, same weights:
    same number, computed once). The seed fixes random starts."""
    from robustgan.evaluate.cache import EvalCache

    cache = cache or EvalCache(run_dir)
    if attack == "none" or eps == 0:
        attack, eps, steps, step_size, restarts = "none", 0.0, 0, None, 1
    elif attack != "pgd":
        steps, step_size, restarts = 0, None, 1
    elif step_size is None:
        step_size = default_step_size(eps, steps)
    settings = dict(attack=attack, eps=float(eps), steps=steps, step_size=step_size, restarts=restarts, n=len(y),
                    seed=seed)
    hit = cache.get(**settings)
    if hit is not None:
        if kw.get("progress") is not None:
            kw["progress"].advance(kw["task"], len(y))
        return hit
    torch.manual_seed(seed)
    value = robust_accuracy(model, x, y, attack=attack, eps=eps, steps=max(steps, 1), step_size=step_size,
                            restarts=restarts, **kw)
    cache.put(value, **settings)
    return value
