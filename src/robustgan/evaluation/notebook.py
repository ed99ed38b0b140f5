"""``robustgan.evaluate``: the default evaluation of any classifier on tensors, from a notebook.

    >>> result = robustgan.evaluate(model, x, y, eps=[0.1, 0.2, 0.3])
    >>> result.accuracy          # {0.1: 0.62, 0.2: 0.35, 0.3: 0.02}
    >>> result.correct.shape     # (n, 3): which points withstood every attack, per eps

The numbers are those ``robustgan eval`` prints for a run: the worst-case ensemble
(docs/evaluation.md), or EOT on a model whose outputs are random."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustgan.attacks import get_attack, robust_mask, worst_case
from robustgan.attacks.ensemble import DEFAULT_TARGETS
from robustgan.attacks.threat import AttackError, check_eps, check_images, model_device, randomized
from robustgan.evaluation.curves import fractions


@dataclass
class Evaluation:
    """Per-eps accuracies, the per-point matrix behind them, and what the evaluation cost."""

    eps: list[float]  # ascending
    accuracy: dict[float, float]  # eps -> fraction k / n of the points correct under every attack (exact)
    correct: torch.Tensor  # (n, len(eps)) bool: point i withstood every attack at eps[k]
    clean: float  # clean accuracy
    attack: str
    attacks: list[str]  # what ran, in order
    gradient_evaluations: int | None  # forward-backward passes summed over points (ensemble only)
    forward_passes: int | None  # the gradient-free stage's queries (ensemble only)
    seconds: float

    def __repr__(self) -> str:
        accuracy = ", ".join(f"{e:g}: {a:.1%}" for e, a in self.accuracy.items())
        return f"Evaluation({self.attack}, n={len(self.correct)}, clean {self.clean:.1%}, {{{accuracy}}})"


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *, attack: str = "ensemble",
             steps: int | None = None, targets: int = DEFAULT_TARGETS, queries: int | None = None, seed: int = 0,
             batch_size: int = 256, device=None) -> Evaluation:
    """Robust accuracy of ``model`` (any nn.Module mapping [0, 1] images to class scores) on
    ``x`` (N, C, H, W), uint8 or float in [0, 1], and int64 labels ``y`` (N,), at every L-inf
    radius of ``eps`` (a number or a list, pixel scale, e.g. 0.3 or 8 / 255).

    ``attack``: "ensemble" (the default: APGD-CE, APGD-T and Square, worst case per point)
    or any name of ``robustgan.attacks.attack_names()``; on a model whose outputs change
    between two passes the ensemble is replaced by "eot". ``steps`` and ``queries`` default
    to the attack's own (100 steps, 5000 Square queries); ``targets=0`` for fewer than 4
    classes. ``device`` defaults to the model's. The model is left in eval mode; its
    parameters are not changed. Bad arguments raise ``robustgan.attacks.AttackError`` (a
    ValueError)."""
    eps = sorted(check_eps(e) for e in ([eps] if isinstance(eps, (int, float)) else eps))
    if not eps or len(set(eps)) != len(eps):
        raise AttackError(f"eps must be one radius or a list of distinct radii, got {eps}")
    spec = get_attack(attack)
    if not isinstance(x, torch.Tensor) or not len(x):
        raise AttackError("x must be a non-empty tensor of images (N, C, H, W)")
    check_images(x.float().div(255) if x.dtype == torch.uint8 else x, y)
    device = model_device(model) if device is None else torch.device(device)
    model.eval()
    if attack == "ensemble" and randomized(model, x[:64].to(device)):
        attack, spec = "eot", get_attack("eot")
    start = time.perf_counter()
    steps = spec.steps if steps is None else steps
    if attack == "ensemble":
        found = worst_case(model, x, y, eps, steps=steps, targets=targets, queries=queries, seed=seed,
                           batch_size=batch_size, device=device)
        correct, clean, attacks = found.correct, found.clean, found.attacks
        grads, forwards = found.grad_evals, found.forwards
    else:
        clean = robust_mask(model, x, y, attack="none", batch_size=batch_size, device=device)
        correct = torch.stack([robust_mask(model, x, y, attack=attack, eps=e, steps=steps, targets=targets, seed=seed,
                                           batch_size=batch_size, device=device, queries=queries) for e in eps], 1)
        attacks, grads, forwards = [attack], None, None
    return Evaluation(eps, dict(zip(eps, fractions(correct))), correct, fractions(clean), attack, attacks, grads,
                      forwards, time.perf_counter() - start)
