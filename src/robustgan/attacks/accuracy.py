"""Accuracy of a model under a registered attack (``attacks.registry``), batched over a test
set on the device: the one batch loop every single-eps evaluation (held-out numbers while
training, checks) goes through. Results are per sample (``robust_mask``), so two attacks on the same images can
be compared pair by pair."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

import robustgan.attacks.autoattack  # noqa: F401  (each attack module registers its attacks when imported)
import robustgan.attacks.eot  # noqa: F401
import robustgan.attacks.gradient  # noqa: F401
import robustgan.attacks.rays  # noqa: F401
from robustgan.attacks.ensemble import DEFAULT_TARGETS
from robustgan.attacks.registry import AttackArgs, default_step_size, get_attack
from robustgan.attacks.threat import check_images, classifier, eval_mode, model_device, probe_classes

__all__ = ["robust_mask", "robust_accuracy", "default_step_size"]


def robust_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "ensemble", eps: float = 0.0,
                steps: int | None = None, step_size: float | None = None, restarts: int = 1, targets: int = DEFAULT_TARGETS,
                seed: int | None = None, ids: torch.Tensor | None = None, batch_size: int = 256, device=None,
                num_classes: int = 10, advance: Callable[[int], None] | None = None, channels_last: bool = False,
                source: nn.Module | None = None, queries: int | None = None) -> torch.Tensor:
    """Which test points ``model`` (eval mode) still classifies correctly under ``attack`` (a
    registered name, ``attack_names()``, or "none"): a bool tensor (n,) on the CPU. x is uint8
    or float in [0, 1].

    The attack runs on ``source`` when given (a transfer or gray-box attack: examples made on
    one model, scored on another), else on ``model``. The whole set moves to ``device``
    once; batches are attacked there. ``steps`` defaults per attack (100 for the APGD-based
    ones, 40 for PGD). ``queries``: the ensemble's gradient-free budget (None: its default, 0:
    gradient attacks only). ``advance(k)`` is called as each batch of k points is done.
    ``channels_last`` converts the model (in place) and the batches to that memory format:
    faster convolutions, same numbers up to float rounding. ``device`` defaults to the model's.
    ``num_classes`` is read from the model's outputs (it is the fallback on an empty set). Every
    module's mode is as it was on return (``threat.eval_mode``)."""
    device = model_device(model) if device is None else device
    spec = None if attack == "none" or eps == 0 else get_attack(attack)
    model = classifier(model)
    source = model if source is None else classifier(source)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    if x.dtype != torch.uint8:
        check_images(x, y)  # once for the whole set; the batches below skip it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    if spec is not None:
        steps, queries = spec.budget(steps, queries)
    with eval_mode(model), eval_mode(source):
        num_classes = probe_classes(model, x, y) or num_classes  # AutoAttack's targets: the model's own classes
        def args(batch_ids):  # by keyword: a field added to AttackArgs shifts nothing
            return AttackArgs(steps=steps, step_size=step_size, restarts=restarts, targets=targets,
                              num_classes=num_classes, seed=seed, ids=batch_ids, check=False, queries=queries)

        if spec is not None and spec.mask is not None:
            return spec.mask(model, source, x, y, eps, args(ids), batch_size, device, advance)
        correct = torch.zeros(len(y), dtype=torch.bool, device=device)
        for start in range(0, len(y), batch_size):
            xb = x[start:start + batch_size]
            xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[start:start + batch_size]
            x_adv = xb if spec is None else spec.run(source, xb, yb, eps, args(ids[start:start + batch_size]))
            with torch.no_grad():
                correct[start:start + batch_size] = model(x_adv).argmax(1) == yb
            if advance is not None:
                advance(len(yb))
    return correct.cpu()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> float:
    """Accuracy of ``model`` on x under an attack: the mean of ``robust_mask`` (same keywords;
    the default attack is the worst-case ensemble)."""
    mask = robust_mask(model, x, y, **kw)
    return mask.float().mean().item() if len(mask) else 0.0
