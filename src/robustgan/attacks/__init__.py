"""Attacks on any nn.Module mapping images in [0, 1] to logits."""

from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.threat import AttackError, attack_mode, ball, check_eps, check_images

__all__ = ["fgsm", "pgd", "autoattack", "AttackError", "attack_mode", "ball", "check_eps", "check_images"]
