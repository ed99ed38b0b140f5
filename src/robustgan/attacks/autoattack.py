"""Standard AutoAttack (Croce & Hein 2020, Sec. 5), L-inf or L2, built from torchattacks' parts
with the published arguments (the same in both norms; each part takes ``norm="Linf"`` or ``"L2"``).

torchattacks 3.5.1's own ``AutoAttack`` builds its APGD, APGD-T and FAB with their default
10 iterations (torchattacks issue #196); the published standard version runs 100. Here, as
in the paper and the reference code (``version='standard'``): APGD-CE, 100 iterations, 1
restart; APGD-T (targeted DLR), 100 iterations towards each of the 9 most likely other
classes; FAB-T, 100 iterations, the same 9 targets; Square, 5000 queries, p_init 0.8. Each
attack runs only on the points every earlier one failed on (``MultiAttack``), so every point
keeps its first successful example: the worst case per point."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import AttackError, attack_mode, check_eps, get_norm

STEPS = 100  # iterations of APGD-CE, APGD-T and FAB-T in the published standard AutoAttack
TARGETS = 9  # target classes of APGD-T and FAB-T (all others on 10 classes)
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8


TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}


def standard_autoattack(model: nn.Module, eps: float, num_classes: int = 10, seed: int = 0, norm: str = "linf"):
    """Standard AutoAttack with the published arguments: a torchattacks ``MultiAttack`` whose
    ``attacks`` are APGD-CE, APGD-T, FAB-T and Square, in that order."""
    try:
        import torchattacks  # optional dependency
    except ImportError:
        raise AttackError("autoattack needs torchattacks: pip install --no-deps torchattacks==3.5.1") from None
    if num_classes < 4:
        raise AttackError(f"AutoAttack's targeted attacks (targeted DLR) need at least 4 classes, the model has "
                          f"{num_classes}: use attack='ensemble' (APGD-CE and Square there)")
    common = dict(eps=eps, norm=TORCHATTACKS_NORMS[norm], seed=seed, n_restarts=1)
    parts = [
        torchattacks.APGD(model, loss="ce", steps=STEPS, rho=0.75, **common),
        torchattacks.APGDT(model, steps=STEPS, rho=0.75, n_classes=num_classes, **common),
        torchattacks.FAB(model, steps=STEPS, multi_targeted=True, n_classes=num_classes, **common),
        torchattacks.Square(model, n_queries=SQUARE_QUERIES, p_init=SQUARE_P_INIT, **common),
    ]
    for targeted in parts[1:3]:  # torchattacks targets all n - 1 other classes; the paper caps it at 9
        targeted.n_target_classes = min(TARGETS, num_classes - 1)
    return torchattacks.MultiAttack(parts)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int = 10,
               seed: int = 0, norm: str = "linf") -> torch.Tensor:
    """Standard AutoAttack on a batch: x (N, C, H, W) in [0, 1], y (N,); returns x_adv in the
    eps-ball of ``norm`` and [0, 1] (each point's first successful example, else x)."""
    eps = check_eps(eps, norm)
    if eps == 0:
        return x.detach().clone()
    with attack_mode(model):
        x_adv = standard_autoattack(model, eps, num_classes, seed, norm)(x, y).detach()
    # torchattacks' L2 parts can end a rounding error outside the ball (L-inf left as it returns)
    return get_norm(norm).project(x_adv, x, eps) if norm == "l2" else x_adv


@register_attack("autoattack", norms=("linf", "l2"), help="standard AutoAttack with its published arguments (needs torchattacks)")
def _autoattack(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return autoattack(model, x, y, eps, num_classes=args.num_classes, norm=args.norm)
