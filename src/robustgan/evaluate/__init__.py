"""Evaluation: accuracy under attack, robustness curves, gradient-masking checks."""

from robustgan.evaluate.robustness import ATTACKS, attack_batch, evaluate_accuracy, robust_accuracy

__all__ = ["ATTACKS", "attack_batch", "evaluate_accuracy", "robust_accuracy"]
