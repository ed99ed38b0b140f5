"""What a classifier's outputs let an attack use: probabilities are attacked through their
logarithm (the logits up to a per-point shift, which no loss or margin of the ensemble sees),
and outputs whose every class but one underflows to 0 carry only the decision (no margin for a
gradient or Square to follow: the ensemble's decision stage, RayS, is what still works)."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.attacks.threat import attack_mode, classifier, model_device


class LogProbabilities(nn.Module):
    """The log of a model's probability outputs: its logits up to a per-point shift, which no
    loss or margin of the ensemble sees. Probabilities that round to 0 become log(tiny) = -87.3."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_probabilities(self.model(x))


def log_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """log(max(p, tiny)) as float32, taken in float64 for float64 outputs (whose probabilities
    can be far below float32's range) and in float32 otherwise."""
    dtype = torch.float64 if outputs.dtype == torch.float64 else torch.float32
    return outputs.to(dtype).clamp_min(torch.finfo(dtype).tiny).log().float()


def is_probabilities(outputs: torch.Tensor) -> bool:
    """Every row in [0, 1] and summing to 1 (to 1e-3, or K half-precision ulps): a softmax's
    output, not logits."""
    tol = max(1e-3, outputs.shape[1] * torch.finfo(outputs.dtype).eps) if outputs.is_floating_point() else 1e-3
    outputs = outputs.float()
    return bool(((outputs >= 0) & (outputs <= 1)).all() and ((outputs.sum(1) - 1).abs() <= tol).all())


def decisions_only(outputs: torch.Tensor) -> torch.Tensor:
    """Per row (N,) bool: probability outputs (``is_probabilities``) whose every entry but the
    largest is below float32's smallest normal number, so their logarithm is clamped to the same
    log(tiny) = -87.3: the margin is one constant wherever the decision holds (probabilities of
    ``softmax(1000 z)``, a hard-label model's one-hot outputs). No gradient and no Square margin
    sees how close such a point is to the boundary: only the decision is usable (float64
    outputs: below float64's smallest normal number)."""
    if not len(outputs) or outputs.shape[1] < 2 or not is_probabilities(outputs):
        return torch.zeros(len(outputs), dtype=torch.bool, device=outputs.device)
    dtype = torch.float64 if outputs.dtype == torch.float64 else torch.float32  # as ``log_probabilities``
    return outputs.to(dtype).topk(2, 1).values[:, 1] < torch.finfo(dtype).tiny


def decisions_only_fraction(model: nn.Module, x: torch.Tensor, batch_size: int = 256, device=None) -> float:
    """The fraction of the points of x (uint8 or [0, 1]) whose clean outputs carry only the
    decision (``decisions_only``): where it is above 0, accuracies under attack are upper bounds
    that no attack of ours can tighten on those points."""
    model = classifier(model)
    device = model_device(model) if device is None else device
    found = 0
    with attack_mode(model), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size].to(device)
            found += int(decisions_only(model(xb.float().div(255) if xb.dtype == torch.uint8 else xb.float())).sum())
    return found / len(x) if len(x) else 0.0


def decisions_only_warning(fraction: float) -> str:
    """The line every report of a decisions-only model carries (``outputs.decisions_only``)."""
    return (f"UPPER BOUNDS: the outputs of {fraction:.1%} of the points carry only the decision (probabilities "
            "that underflow to 0, or one-hot outputs): no gradient or score-based attack can use them (the default "
            "ensemble attacks them with the decision-based RayS); evaluate the model's logits for a tighter number")


def as_logits(model: nn.Module, outputs: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The model the ensemble attacks and its float32 logits, given its ``outputs`` on a batch:
    the model itself, or ``LogProbabilities(model)`` where the outputs are probabilities.
    Decided per batch (a model whose outputs are probabilities on some batches only is not
    one we can tell apart)."""
    if is_probabilities(outputs):
        return LogProbabilities(model), log_probabilities(outputs)
    return model, outputs.float()
