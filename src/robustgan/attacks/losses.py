"""Per-sample attack losses on float32 logits (N, K) and labels (N,): cross-entropy, the
cross-entropy computed without saturation, the cross-entropy of standardized logits, and the
difference of logits ratio of Croce & Hein 2020 (eq. 6; its targeted form, Sec. 4).

DLR and the standardized cross-entropy are invariant to shifting each point's logits and
scaling all of them by a constant k > 0, so a temperature or a log-softmax cannot make their
gradients vanish or change where the cross-entropy's does: the default
ensemble attacks with these two only (the loss-invariance check compares CE with DLR). The
unsaturated cross-entropy has the cross-entropy's gradient direction exactly, so it is the
like-for-like reference of the scale check."""

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


# The standard deviation standardized logits are scaled to. Per point the largest gap between two
# of K standardized logits is at most sqrt(2 K) TEMPERATURE (13.4 for K = 10), and the unsaturated
# form below never saturates. How it was chosen: docs/evaluation.md, "What keeps the decision".
TEMPERATURE = 3.0


def _scale(values: torch.Tensor) -> torch.Tensor:
    """A per-row positive scale, detached; 1 for a row of zeros (its gradient stays finite)."""
    return torch.where(values > 0, values, torch.ones_like(values)).detach()


def standardized(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Each row shifted to mean 0 and scaled to standard deviation ``temperature``: the same
    for z, k z + c(x) (any k > 0, any per-point shift) and log_softmax(k z), up to float
    rounding. The scale is a constant for the gradient (detached), so the gradient is the
    logits' own at a per-point temperature (docs/evaluation.md says why the scale is detached). Rows are first
    divided by their largest magnitude, so logits up to float32's range do not overflow when
    squared; a constant row stays zero, with a finite gradient."""
    centered = logits - logits.mean(1, keepdim=True)
    unit = centered / _scale(centered.abs().amax(1, keepdim=True))
    return temperature * unit / _scale(unit.square().mean(1, keepdim=True).sqrt())


def ce_standardized_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unsaturated cross-entropy of the standardized logits: the loss of the ensemble's
    APGD-CE, invariant to logits times k > 0 and to log-softmax. With two classes the
    standardized logits are always (T, -T), so the loss is the unsaturated CE of the logits
    themselves, z_other - z_y, which is just as invariant (its value scales, its order and
    gradient direction do not)."""
    if logits.shape[1] < 3:
        return ce_unsaturated_loss(logits, y)
    return ce_unsaturated_loss(standardized(logits), y)


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
    "ce-standardized": lambda logits, y, target: ce_standardized_loss(logits, y),
    "dlr": lambda logits, y, target: dlr_loss(logits, y),
    "dlr-targeted": dlr_targeted_loss,
    "kl": lambda logits, logits_clean, target: trades_kl(logits, logits_clean),
}
