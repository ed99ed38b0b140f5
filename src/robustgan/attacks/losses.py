"""Per-sample attack losses on float32 logits (N, K) and labels (N,): cross-entropy, the
cross-entropy computed without saturation, and the difference of logits ratio of Croce &
Hein 2020 (eq. 6; its targeted form, Sec. 4).

DLR is invariant to shifting and scaling the logits, so a saturated softmax or a
temperature cannot make its gradient vanish where the cross-entropy's does (the
loss-invariance check compares the two). The unsaturated cross-entropy has the
cross-entropy's gradient direction exactly, so it is the like-for-like reference of the
scale check."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def ce_unsaturated_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """M = logsumexp_{i != y} z_i - z_y, with CE = log(1 + exp(M)) = softplus(M).

    dCE/dz = p - e_y = (1 - p_y) dM/dz: the two gradients differ by a positive factor per
    sample, so sign-gradient attacks (PGD, APGD) take the same steps, and CE is increasing in
    M, so they keep the same best iterates. Except in float32: once the logit margin
    exceeds ~17 (logits times a constant, a temperature) p_y rounds to 1, the cross-entropy
    loses its -dz_y term and underflows to zero further on; M keeps the exact direction at
    any scale (Tramer et al. 2020, "On adaptive attacks": unsaturate the softmax)."""
    return logits.scatter(1, y[:, None], -math.inf).logsumexp(1) - logits.gather(1, y[:, None])[:, 0]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (6): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), z sorted descending (needs >= 3 classes)."""
    top = logits.sort(1, descending=True).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).max(1).values
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Sec. 4): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (needs >= 4 classes)."""
    top = logits.sort(1, descending=True).values
    z_y, z_t = logits.gather(1, y[:, None])[:, 0], logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits_clean) || softmax(logits_adv)) per sample (N,), float32: the
    robustness term of TRADES (Zhang et al. 2019, eq. 5; the official code's
    KLDivLoss(log_softmax(f(x')), softmax(f(x))))."""
    log_p_adv = F.log_softmax(logits_adv.float(), 1)
    log_p_clean = F.log_softmax(logits_clean.float(), 1)
    return (log_p_clean.exp() * (log_p_clean - log_p_adv)).sum(1)


# name -> loss(logits, y, target); target is None except for the targeted loss. For "kl", y is
# not a label but the clean logits (N, K): TRADES' inner maximisation
LOSSES = {
    "ce": lambda logits, y, target: ce_loss(logits, y),
    "ce-unsaturated": lambda logits, y, target: ce_unsaturated_loss(logits, y),
    "dlr": lambda logits, y, target: dlr_loss(logits, y),
    "dlr-targeted": dlr_targeted_loss,
    "kl": lambda logits, logits_clean, target: trades_kl(logits, logits_clean),
}
