"""Accuracy of a model under an attack, batched over a test set on the device: the one
batch loop every single-eps evaluation (held-out numbers while training, checks) goes
through. Results are per sample (``robust_mask``), so two attacks on the same images can
be compared pair by pair."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run
from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.ensemble import DEFAULT_TARGETS, worst_case
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.threat import AttackError, check_images

# what `--attack` accepts ("none" means clean accuracy); the first is the default
ATTACK_NAMES = ("ensemble", "apgd-ce", "apgd-dlr", "pgd", "pgd-dlr", "pgd-unsaturated", "fgsm", "autoattack")
PGD_ATTACKS = {"pgd": "ce", "pgd-dlr": "dlr", "pgd-unsaturated": "ce-unsaturated"}  # name -> loss
DEFAULT_STEPS = {"ensemble": 100, "apgd-ce": 100, "apgd-dlr": 100, **{name: 40 for name in PGD_ATTACKS}}


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al.); 0.01 for the unbounded attack."""
    return 0.01 if math.isinf(eps) else max(2.5 * eps / steps, 1e-6)


def attack_batch(model, x, y, attack: str, eps: float, steps: int = 10, step_size: float | None = None,
                 restarts: int = 1, num_classes: int = 10, check: bool = True, *, targets: int = DEFAULT_TARGETS,
                 seed: int | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial images for one batch (x in [0, 1]); ``attack='none'`` (or eps 0) returns x.
    With ``seed``, random starts are drawn per sample from ``ids`` (see ``sample_noise``)."""
    if attack == "none" or eps == 0:
        return x
    if attack == "fgsm":
        return fgsm(model, x, y, eps, check=check)
    if attack in PGD_ATTACKS:
        return pgd(model, x, y, eps, steps, step_size or default_step_size(eps, steps), True, restarts, seed=seed,
                   ids=ids, loss=PGD_ATTACKS[attack], check=check)
    if attack in ("apgd-ce", "apgd-dlr"):
        return apgd_run(model, x, y, eps, steps=steps, loss=attack[5:], restarts=restarts, seed=seed or 0,
                        ids=ids).x_adv
    if attack == "autoattack":
        return autoattack(model, x, y, eps, num_classes=num_classes)
    raise AttackError(f"unknown attack {attack!r}; choose one of none, {', '.join(ATTACK_NAMES)}")


def robust_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "ensemble", eps: float = 0.0,
                steps: int | None = None, step_size: float | None = None, restarts: int = 1, targets: int = DEFAULT_TARGETS,
                seed: int | None = None, ids: torch.Tensor | None = None, batch_size: int = 256, device="cpu",
                num_classes: int = 10, progress=None, task=None, channels_last: bool = False,
                source: nn.Module | None = None) -> torch.Tensor:
    """Which test points ``model`` (eval mode) still classifies correctly under ``attack``:
    a bool tensor (n,) on the CPU. x is uint8 or float in [0, 1].

    The attack runs on ``source`` when given (a transfer or gray-box attack: examples made on
    one model, scored on another), else on ``model``. The whole set moves to ``device``
    once; batches are attacked there. ``steps`` defaults per attack (100 for the APGD-based
    ones, 40 for PGD). ``progress`` / ``task`` (a rich Progress and task id) advance by the
    batch size. ``channels_last`` converts the model (in place) and the batches to that
    memory format: faster convolutions, same numbers up to float rounding."""
    model.eval()
    source = model if source is None else source.eval()
    steps = DEFAULT_STEPS.get(attack, 1) if steps is None else steps
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    if x.dtype != torch.uint8:
        check_images(x, y)  # once for the whole set; the batches below skip it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    if attack == "ensemble" and eps != 0:
        found = worst_case(source, x, y, [eps], steps=steps, targets=targets, restarts=restarts, seed=seed or 0,
                           batch_size=batch_size, device=device, ids=ids, keep_examples=source is not model,
                           progress=progress, task=task)
        if source is model:
            return found.correct[:, 0]
        with torch.no_grad():  # a transfer: the examples found on the source, scored on the model
            return torch.cat([model(found.examples[0, i:i + batch_size].to(device)).argmax(1).cpu()
                              == y[i:i + batch_size].cpu() for i in range(0, len(y), batch_size)])
    correct = torch.zeros(len(y), dtype=torch.bool, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size]
        xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[start:start + batch_size]
        x_adv = attack_batch(source, xb, yb, attack, eps, steps, step_size, restarts, num_classes, check=False,
                             targets=targets, seed=seed, ids=ids[start:start + batch_size])
        with torch.no_grad():
            correct[start:start + batch_size] = model(x_adv).argmax(1) == yb
        if progress is not None:
            progress.advance(task, len(yb))
    return correct.cpu()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> float:
    """Accuracy of ``model`` on x under an attack: the mean of ``robust_mask`` (same keywords;
    the default attack is the worst-case ensemble)."""
    mask = robust_mask(model, x, y, **kw)
    return mask.float().mean().item() if len(mask) else 0.0
