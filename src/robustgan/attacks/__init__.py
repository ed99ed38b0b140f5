"""Attacks on any nn.Module mapping images in [0, 1] to logits, and accuracy under them."""

from robustgan.attacks.accuracy import ATTACK_NAMES, attack_batch, default_step_size, robust_accuracy
from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.threat import AttackError, attack_mode, ball, check_eps, check_images

__all__ = ["fgsm", "pgd", "autoattack", "robust_accuracy", "attack_batch", "default_step_size", "ATTACK_NAMES",
           "AttackError", "attack_mode", "ball", "check_eps", "check_images"]
