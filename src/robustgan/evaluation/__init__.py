"""Evaluation of trained runs: robustness curves, gradient-masking checks, saliency maps,
logit trends, and classifying image files. Accuracy under one attack is
``robustgan.attacks.robust_accuracy`` (re-exported here)."""

from robustgan.attacks import robust_accuracy

__all__ = ["robust_accuracy"]
