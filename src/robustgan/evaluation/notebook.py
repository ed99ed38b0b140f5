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

from robustgan.attacks import attack_names, get_attack, robust_mask, worst_case
from robustgan.attacks.threat import AttackError, model_device


@dataclass
class Evaluation:
    """Per-eps accuracies, the per-point matrix behind them, and what the evaluation cost."""

    eps: list[float]  # ascending
    accuracy: dict[float, float]  # eps -> fraction of the n points correct under every attack
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


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps=(0.1, 0.2, 0.3), *, attack: str = "ensemble",
             steps: int | None = None, queries: int | None = None, seed: int = 0, batch_size: int = 256,
             device=None) -> Evaluation:
    """Robust accuracy of ``model`` (any nn.Module mapping [0, 1] images to class scores) on
    ``x`` (N, C, H, W), uint8 or float in [0, 1], and labels ``y`` (N,), at every L-inf
    radius of ``eps`` (pixel scale, e.g. 0.3 or 8 / 255).

    ``attack``: "ensemble" (the default: APGD-CE, APGD-T and Square, worst case per point)
    or any name of ``robustgan.attacks.attack_names()``; on a model whose outputs change
    between two passes the ensemble is replaced by "eot". ``steps`` and ``queries`` default
    to the attack's own (100 steps, 5000 Square queries). ``device`` defaults to the
    model's. The model is put in eval mode; its parameters are not changed. Bad arguments raise
    ``robustgan.attacks.AttackError`` (a ValueError)."""
    from robustgan.evaluation.curves import randomized

    eps = [float(e) for e in ([eps] if isinstance(eps, (int, float)) else eps)]
    if not eps or any(not 0 <= e <= 1 and e != float("inf") for e in eps):
        raise AttackError(f"eps must be a non-empty list of radii in [0, 1] (or inf), got {eps}")
    if len(set(eps)) != len(eps):
        raise AttackError(f"eps has a radius twice: {eps}")
    if attack not in attack_names():
        raise AttackError(f"attack must be one of {', '.join(attack_names())}, got {attack!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() != 4 or len(x) != len(y):
        raise AttackError("x must be a tensor (N, C, H, W) and y a tensor (N,) of labels, as many as images")
    device = model_device(model) if device is None else torch.device(device)
    eps = sorted(eps)
    model.eval()
    if attack == "ensemble" and randomized(model, x[:64].to(device)):
        attack = "eot"
    start = time.perf_counter()
    try:
        if attack == "ensemble":
            found = worst_case(model, x, y, eps, steps=steps or get_attack(attack).steps, queries=queries, seed=seed,
                               batch_size=batch_size, device=device)
            correct, clean, attacks = found.correct, found.clean, found.attacks
            grads, forwards = found.grad_evals, found.forwards
        else:
            clean = robust_mask(model, x, y, attack="none", batch_size=batch_size, device=device)
            correct = torch.stack([robust_mask(model, x, y, attack=attack, eps=e, steps=steps, seed=seed,
                                               batch_size=batch_size, device=device, queries=queries) for e in eps], 1)
            attacks, grads, forwards = [attack], None, None
    except AttackError as err:
        raise AttackError(str(err)) from None
    n = max(len(y), 1)
    accuracy = {e: correct[:, k].sum().item() / n for k, e in enumerate(eps)}
    return Evaluation(eps, accuracy, correct, clean.sum().item() / n, attack, attacks, grads, forwards,
                      time.perf_counter() - start)
