"""``robustgan.evaluate``: the default evaluation of any classifier on tensors, from a notebook.

    >>> result = robustgan.evaluate(model, x, y, eps=[0.1, 0.2, 0.3])
    >>> result.accuracy          # {0.1: 0.62, 0.2: 0.35, 0.3: 0.02}
    >>> result.correct.shape     # (n, 3): which points withstood every attack, per eps

The numbers are those ``robustgan eval`` prints for a run: the worst-case ensemble
(docs/evaluation.md), or EOT on a model whose outputs are random."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustgan.attacks import AttackSettings, get_attack
from robustgan.attacks.outputs import decisions_only_warning
from robustgan.attacks.threat import AttackError, check_eps, check_images, classifier, eval_mode, model_device, probe_classes
from robustgan.eps import parse_number
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.curves import fractions
from robustgan.evaluation.engine import Subject, run_attack


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
    forward_passes: int | None  # the query stages' forward passes (ensemble only)
    seconds: float
    decisions_only: float = 0.0  # fraction of points whose outputs carry only the decision: accuracies are upper bounds
    passes_by_stage: dict | None = None  # the ensemble's passes per stage: gradient evaluations, or forwards (queries)
    norm: str = "linf"  # the threat model the radii are in

    def __repr__(self) -> str:
        bound = "<= " if self.decisions_only else ""
        accuracy = ", ".join(f"{e:g}: {bound}{a:.1%}" for e, a in self.accuracy.items())
        warning = f", {decisions_only_warning(self.decisions_only)}" if self.decisions_only else ""
        norm = "" if self.norm == "linf" else f", {self.norm.upper()}"
        return f"Evaluation({self.attack}{norm}, n={len(self.correct)}, clean {self.clean:.1%}, {{{accuracy}}}{warning})"


def eps_list(eps, norm: str = "linf") -> list[float]:
    """One radius or several, as floats in ascending order: numbers, numpy or 0-d tensor scalars,
    fractions like "8/255", or a list, tuple, array or tensor of them; each checked for ``norm``."""
    if isinstance(eps, (str, int, float)) or getattr(eps, "ndim", None) == 0:
        eps = [eps]
    try:
        if getattr(eps, "ndim", 1) != 1:
            raise ValueError("eps must be one radius or a flat list")
        values = [parse_number(e.item() if hasattr(e, "item") else e) for e in eps]
    except (TypeError, ValueError, ZeroDivisionError):
        raise AttackError(f"eps must be a radius (0.3, 8 / 255, \"8/255\") or a list of them, got {eps!r}") from None
    values = sorted(check_eps(e, norm) for e in values)
    if not values or len(set(values)) != len(values):
        raise AttackError(f"eps must be one radius or a list of distinct radii, got {values}")
    return values


def attack_settings(attack: str | AttackSettings, options: dict) -> AttackSettings:
    """``attack`` as settings, with ``options`` (AttackSettings' fields) replacing its own."""
    fields = {f.name for f in dataclasses.fields(AttackSettings)} - {"name"}
    if set(options) - fields:
        raise AttackError(f"unknown option {', '.join(sorted(set(options) - fields))}; "
                          f"the attack's settings are {', '.join(sorted(fields))}")
    settings = attack if isinstance(attack, AttackSettings) else AttackSettings(str(attack))
    get_attack(settings.name)  # an unknown attack, "none" included: one AttackError naming every choice
    return dataclasses.replace(settings, **options)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *, attack: str | AttackSettings = "ensemble",
             batch_size: int = 256, device=None, **options) -> Evaluation:
    """Robust accuracy of ``model`` (any nn.Module mapping [0, 1] images to class scores) on
    ``x`` (N, C, H, W), uint8 or float in [0, 1], and int64 labels ``y`` (N,), at every radius of
    ``eps`` (a number, "8/255", or a list of them; pixel scale, e.g. 0.3 or 8 / 255), in L-inf, or
    with ``norm="l2"`` in L2 (the Euclidean distance over all pixels, e.g. 0.5 on CIFAR-10).

    The model may return logits, log-probabilities or probabilities, as a tensor, the first item
    of a tuple, a dict's "logits" or an output's ``.logits``; float16 and float64 images and
    models are cast to the model's dtype. ``attack``: "ensemble" (the default: the worst case per
    point over its stages, docs/evaluation.md) or any name of ``robustgan.attacks.attack_names()``,
    or an ``AttackSettings``; on a model whose outputs change between two passes the ensemble is
    replaced by "eot". ``options`` are ``AttackSettings``' fields (``steps``, ``step_size``,
    ``restarts``, ``targets``, ``queries``, ``seed``, ``norm``), each defaulting to the attack's own (100
    steps, 5000 Square queries, seed 0); APGD-T is left out below 4 classes. ``device`` defaults to the model's. The model is attacked in eval mode
    and handed back unchanged: every module's mode, every parameter and buffer as they were.
    Where the outputs carry only decisions (``decisions_only`` > 0) the accuracies are upper
    bounds, and the result says so. Bad arguments raise ``robustgan.attacks.AttackError`` (a
    ValueError)."""
    settings = attack_settings(attack, options).check()
    eps = eps_list(eps, settings.norm)
    if not isinstance(x, torch.Tensor) or not len(x):
        raise AttackError("x must be a non-empty tensor of images (N, C, H, W)")
    check_images(x.float().div(255) if x.dtype == torch.uint8 else x.float(), y)
    device = model_device(model) if device is None else torch.device(device)
    model = classifier(model)
    with eval_mode(model):
        probe_classes(model, x[:1].to(device), y)
    found = run_attack(Subject(model, x, y), eps, settings, EvalContext(device, batch_size))
    cost = found.cost or {}
    return Evaluation(eps, dict(zip(eps, fractions(found.correct))), found.correct, fractions(found.clean),
                      found.settings.name, found.attacks, cost.get("grad_evals"), cost.get("forwards"), found.seconds,
                      found.decisions_only, cost.get("by_stage"), settings.norm)
