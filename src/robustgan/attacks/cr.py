"""The constraint-relaxation attack (``--attack cr``): our reading of "Efficient Robustness
Evaluation via Constraint Relaxation" (CR, AAAI 2025), written from its description, not from its
code: the direction is found in a ball larger than eps, with a relaxation that decays to zero, and
a point still far from fooled after that short phase is given up.

Per point, at one eps (docs/evaluation.md, "What the default spends against standard AutoAttack,
and the CR attack", measures it beside the default):
1. relaxed screening: APGD on the standardized cross-entropy for ``SCREEN`` steps in the L-inf
   ball of radius (1 + r) eps, for each r of ``RELAX`` in turn (decaying to 0), each run
   starting from the previous one's result projected into the true eps-ball (the clean image
   first);
2. give up: a point whose margin at the screening's result (in the true ball) has closed no more than
   1 - ``DROP`` of its clean logit gap (margin ratio above ``DROP``, invariant to scaling the
   logits) is given up, counted robust by this attack;
3. the others: APGD-CE from that point in the true ball (the rest of ``steps``), then APGD-T
   (targeted DLR) towards the ``targets`` most likely other classes at the worst point, each with
   the ensemble's give-up rule (``stages.GIVE_UP``).

Unlike the default ensemble it runs no gradient-free stage and gives up for good: a model whose
gradients mislead (tests/planted.py) can look robust to it. It is a comparison point, not the
number robustgan prints."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.attacks.apgd import apgd_run, margin, target_order
from robustgan.attacks.ensemble import usable_targets
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.stages import GIVE_UP
from robustgan.attacks.threat import attack_mode, check_eps, get_norm

RELAX = (1.0, 0.5, 0.0)  # the relaxed radii (1 + r) eps of the screening runs, decaying to the true ball
SCREEN = 8  # APGD steps per screening run
DROP = 0.6  # after screening, give up a point whose margin ratio (best / clean margin) is above this
TARGETS = 3  # APGD-T's targets on the points not given up


def cr_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 100,
              targets: int = TARGETS, seed: int = 0, ids: torch.Tensor | None = None,
              norm: str = "linf") -> tuple[torch.Tensor, int]:
    """(x_adv in the eps-ball and [0, 1], gradient evaluations) of the CR attack on a batch: x
    (N, C, H, W) float in [0, 1], model outputs logits. Steps, seed and ids as ``apgd_run``;
    APGD-T runs only on models with at least 4 classes (``usable_targets``). ``norm``: the threat
    model ("linf" or "l2"), the relaxed balls and the projection back in it."""
    threat = get_norm(norm)
    eps = min(check_eps(eps, norm), threat.unbounded(x))  # inf: the radius whose ball holds the [0, 1] box
    if eps == 0:
        return x.detach().clone(), 0
    with attack_mode(model):
        with torch.no_grad():
            logits = model(x).float()
        clean_margin = margin(logits, y)
        best, evals = x.clone(), 0
        for r in RELAX:  # 1. screening in relaxed balls, each projected back into the true ball
            got = apgd_run(model, x, y, eps * (1 + r), steps=SCREEN, loss="ce-standardized", x_init=best, seed=seed,
                           ids=ids, norm=norm)
            evals += got.grad_evals
            best = threat.project(got.x_adv, x, eps)
        with torch.no_grad():
            logits = model(best).float()
        worst_margin = margin(logits, y)
        todo = (worst_margin < 0) & (worst_margin >= DROP * clean_margin)  # 2. the rest is given up
        idx = todo.nonzero()[:, 0]
        if len(idx):  # 3. APGD-CE, then APGD-T towards the likeliest targets at the worst point
            got = apgd_run(model, x[idx], y[idx], eps, steps=max(steps - SCREEN * len(RELAX), 1), loss="ce-standardized",
                           x_init=best[idx], seed=seed, ids=None if ids is None else ids[idx.cpu()],
                           give_up=(GIVE_UP, clean_margin[idx]), norm=norm)
            evals += got.grad_evals
            best[idx] = got.x_adv
            left = idx[~got.fooled]
            if len(left) and usable_targets(targets, logits.shape[1]):
                with torch.no_grad():
                    order = target_order(model(best[left]).float(), y[left])
                for rank in range(1, usable_targets(targets, logits.shape[1]) + 1):
                    got = apgd_run(model, x[left], y[left], eps, steps=steps, loss="dlr-targeted",
                                   target=order[:, rank - 1], seed=seed + 7919 * rank,
                                   ids=None if ids is None else ids[left.cpu()], give_up=(GIVE_UP, clean_margin[left]),
                                   norm=norm)
                    evals += got.grad_evals
                    best[left[got.fooled]] = got.x_adv[got.fooled]
                    keep = ~got.fooled
                    left, order = left[keep], order[keep]
                    if not len(left):
                        break
        return best.detach(), evals


@register_attack("cr", steps=100, key=("steps",), norms=("linf", "l2"),
                 help="the constraint-relaxation attack (CR, AAAI 2025), our reading: relaxed-ball screening, "
                      "far points given up, APGD-CE and APGD-T on the rest; no gradient-free stage")
def _cr(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return cr_attack(model, x, y, eps, steps=args.steps, seed=args.seed or 0, ids=args.ids, norm=args.norm)[0]
