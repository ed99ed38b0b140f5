"""Randomized defenses (noise, random transformations at test time): AutoAttack's 'rand'
version (Croce & Hein 2020, Sec. 5): APGD-CE, then APGD-DLR on the points it left robust, each
100 steps with the loss and its gradient averaged over ``eot`` = 20 draws of the model
(expectation over transformation, Athalye, Carlini and Wagner, "Obfuscated gradients give a
false sense of security", ICML 2018). A randomized model answers differently each time, so each
point's example is scored over ``draws`` forward passes: the accuracy is the mean over draws,
reported with its spread (the standard deviation of the per-draw accuracies)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import attack_mode, check_eps

EOT = 20  # draws per gradient, as AutoAttack's rand version
DRAWS = 10  # forward passes each point's example is scored over


@dataclass
class RandomizedResult:
    x_adv: torch.Tensor  # (n, C, H, W): each point's example (the one fooling it in more draws)
    correct: torch.Tensor  # (n, draws) bool: correct in each scoring draw
    grad_evals: int  # forward-backward passes, the EOT draws included
    seconds: float

    @property
    def accuracy(self) -> float:
        """Mean accuracy over the scoring draws."""
        return self.correct.float().mean().item() if self.correct.numel() else 0.0

    @property
    def spread(self) -> float:
        """Standard deviation of the per-draw accuracies."""
        return self.correct.float().mean(0).std().item() if self.correct.shape[1] > 1 else 0.0


def _scored(model, x_adv, y, draws) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(x_adv).argmax(1) == y for _ in range(draws)], 1)


def randomized_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 100,
                      eot: int = EOT, draws: int = DRAWS, seed: int = 0, ids: torch.Tensor | None = None,
                      norm: str = "linf") -> RandomizedResult:
    """APGD-CE then APGD-DLR with EOT on a batch x (N, C, H, W) in [0, 1]; APGD-DLR only on the
    points APGD-CE's example fools in fewer than half the draws, and only on 3 or more classes
    (DLR, eq. 6, needs a third logit: a 2-class model gets APGD-CE alone). Returns the
    examples, their per-draw correctness and the cost. ``norm``: the threat model ("linf" or "l2")."""
    start = time.perf_counter()
    eps = check_eps(eps, norm)
    with attack_mode(model):
        x, y = x.detach(), y.detach()
        ce = apgd_run(model, x, y, eps, steps=steps, loss="ce", seed=seed, ids=ids, eot=eot, norm=norm)
        x_adv, correct, evals = ce.x_adv, _scored(model, ce.x_adv, y, draws), ce.grad_evals
        todo = (correct.float().mean(1) > 0.5).nonzero()[:, 0]
        with torch.no_grad():
            classes = model(x[:1]).shape[1] if len(x) else 0
        if len(todo) and eps > 0 and classes >= 3:
            dlr = apgd_run(model, x[todo], y[todo], eps, steps=steps, loss="dlr", seed=seed + 1,
                           ids=None if ids is None else ids[todo.cpu()], eot=eot, norm=norm)
            again = _scored(model, dlr.x_adv, y[todo], draws)
            better = again.float().mean(1) < correct[todo].float().mean(1)
            x_adv[todo[better]], correct[todo[better]] = dlr.x_adv[better], again[better]
            evals += dlr.grad_evals
    return RandomizedResult(x_adv, correct.cpu(), evals, time.perf_counter() - start)


@register_attack("eot", steps=100, key=("steps",), norms=("linf", "l2"), help="for randomized models: APGD-CE and APGD-DLR with "
                 "gradients averaged over 20 draws (AutoAttack's rand version)")
def _eot(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return randomized_attack(model, x, y, eps, steps=args.steps, seed=args.seed or 0, ids=args.ids, norm=args.norm).x_adv
