"""Accuracy of a model under a registered attack (``attacks.registry``), batched over a test
set on the device: the one batch loop every single-eps attack goes through (held-out numbers
while training, and the evaluation engine's per-eps path). Results are per sample
(``robust_mask``), so two attacks on the same images can be compared pair by pair."""

from __future__ import annotations

import torch
import torch.nn as nn

import robustgan.attacks.autoattack  # noqa: F401  (each attack module registers its attacks when imported)
import robustgan.attacks.ensemble  # noqa: F401
import robustgan.attacks.eot  # noqa: F401
import robustgan.attacks.fab  # noqa: F401
import robustgan.attacks.gradient  # noqa: F401
import robustgan.attacks.rays  # noqa: F401
from robustgan.attacks.registry import default_step_size
from robustgan.attacks.settings import AttackSettings, Batching
from robustgan.attacks.threat import check_images, classifier, eval_mode, model_device, probe_classes

__all__ = ["robust_mask", "robust_accuracy", "default_step_size"]


def robust_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.0,
                settings: AttackSettings = AttackSettings(), batching: Batching = Batching(), *,
                ids: torch.Tensor | None = None, source: nn.Module | None = None, num_classes: int = 10) -> torch.Tensor:
    """Which test points ``model`` (eval mode) still classifies correctly under the attack of
    ``settings`` at ``eps`` (eps 0 or the name "none": clean): a bool tensor (n,) on the CPU.
    x is uint8 or float in [0, 1].

    The attack runs on ``source`` when given (a transfer or gray-box attack: examples made on
    one model, scored on another), else on ``model``. The whole set moves to the device once;
    batches are attacked there. ``ids`` are the points' indices in the test set: random starts
    are drawn per point from them and ``settings.seed`` (default 0; None: torch's generator). ``num_classes`` is read from the model's outputs (it is the
    fallback on an empty set). Every module's mode is as it was on return (``threat.eval_mode``)."""
    device = model_device(model) if batching.device is None else batching.device
    spec = settings.check().attack_at(eps)  # an attack without a version in the settings' norm: refused
    model = classifier(model)
    source = model if source is None else classifier(source)
    if batching.channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    if x.dtype != torch.uint8:
        check_images(x, y)  # once for the whole set; the batches below skip it
    ids = torch.arange(len(y)) if ids is None else ids.cpu()
    with eval_mode(model), eval_mode(source):
        num_classes = probe_classes(model, x, y) or num_classes  # AutoAttack's targets: the model's own classes
        if spec is not None and spec.mask is not None:
            return spec.mask(model, source, x, y, eps, settings.args(num_classes=num_classes, ids=ids), batching)
        correct = torch.zeros(len(y), dtype=torch.bool, device=device)
        for start in range(0, len(y), batching.batch_size):
            xb = x[start:start + batching.batch_size]
            xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
            if batching.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[start:start + batching.batch_size]
            batch_ids = ids[start:start + batching.batch_size]
            x_adv = xb if spec is None else spec.run(source, xb, yb, eps, settings.args(num_classes=num_classes,
                                                                                         ids=batch_ids))
            with torch.no_grad():
                correct[start:start + batching.batch_size] = model(x_adv).argmax(1) == yb
            batching.done(len(yb))
    return correct.cpu()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.0,
                    settings: AttackSettings = AttackSettings(), batching: Batching = Batching(), **kw) -> float:
    """Accuracy of ``model`` on x under an attack: the mean of ``robust_mask`` (same arguments)."""
    mask = robust_mask(model, x, y, eps, settings, batching, **kw)
    return mask.float().mean().item() if len(mask) else 0.0
