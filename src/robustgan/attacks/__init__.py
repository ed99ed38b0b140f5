"""Attacks on any nn.Module mapping images in [0, 1] to logits, and accuracy under them."""

from robustgan.attacks.accuracy import (ATTACK_NAMES, attack_batch, default_step_size, robust_accuracy,
                                        robust_mask)
from robustgan.attacks.apgd import apgd
from robustgan.attacks.losses import dlr_loss, dlr_targeted_loss
from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.ensemble import ATTACK_VERSION, WorstCase, worst_case
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.threat import AttackError, attack_mode, ball, check_eps, check_images

__all__ = ["fgsm", "pgd", "apgd", "autoattack", "worst_case", "WorstCase", "dlr_loss", "dlr_targeted_loss",
           "robust_accuracy", "robust_mask", "attack_batch", "default_step_size", "ATTACK_NAMES", "ATTACK_VERSION",
           "AttackError", "attack_mode", "ball", "check_eps", "check_images"]
