"""AutoAttack (Croce & Hein 2020) through torchattacks, when installed."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.attacks.threat import AttackError, attack_mode, check_eps


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int = 10,
               version: str = "standard", seed: int = 0) -> torch.Tensor:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square), L-inf, pixels in [0, 1]."""
    eps = check_eps(eps)
    try:
        import torchattacks  # optional dependency
    except ImportError:
        raise AttackError("autoattack needs torchattacks: pip install --no-deps torchattacks==3.5.1") from None
    with attack_mode(model):
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version, n_classes=num_classes, seed=seed)
        return attack(x, y).detach()
