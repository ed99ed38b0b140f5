"""Attacks on any nn.Module mapping images in [0, 1] to logits, and accuracy under them. Every
attack is registered (``register_attack``): ``attack_names()`` lists them, the default first."""

from robustgan.attacks.accuracy import robust_accuracy, robust_mask
from robustgan.attacks.apgd import apgd
from robustgan.attacks.autoattack import autoattack
from robustgan.attacks.cr import cr_attack
from robustgan.attacks.ensemble import Savings, WorstCase, worst_case
from robustgan.attacks.gradient import fgsm, pgd
from robustgan.attacks.losses import dlr_loss, dlr_targeted_loss
from robustgan.attacks.square import square
from robustgan.attacks.registry import (ATTACK_VERSION, ATTACKS, DEFAULT_ATTACK, DEFAULT_TARGETS, AttackArgs, AttackSpec,
                                        attack_label, attack_names, attack_table, default_step_size, get_attack,
                                        register_attack)
from robustgan.attacks.settings import AttackSettings, Batching
from robustgan.attacks.stages import STAGES, Stage, StageBatch
from robustgan.attacks.threat import NORMS, AttackError, attack_mode, ball, check_eps, check_images, get_norm

ATTACK_NAMES = attack_names()  # the built-in attacks; attack_names() also lists those registered later

__all__ = ["fgsm", "pgd", "apgd", "autoattack", "cr_attack", "square", "worst_case", "WorstCase", "Savings", "dlr_loss",
           "dlr_targeted_loss", "robust_accuracy", "robust_mask", "default_step_size", "ATTACK_NAMES",
           "ATTACK_VERSION", "ATTACKS", "DEFAULT_ATTACK", "DEFAULT_TARGETS", "AttackArgs", "AttackSettings", "Batching",
           "STAGES", "Stage", "StageBatch", "AttackSpec", "attack_label", "attack_names",
           "attack_table", "get_attack", "register_attack", "AttackError", "attack_mode", "ball", "check_eps", "get_norm", "NORMS",
           "check_images"]
