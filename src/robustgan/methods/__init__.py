"""Training methods, one module each. A method owns its networks and optimizers and exposes
``step(x, y) -> dict``, ``defended_model()`` and the sub-runs it needs; ``robustgan.train``
runs any of them."""

from robustgan.methods.base import METHODS, Geometry, Method, MethodConfig, eps_train, method_class, norm_train, register_method
from robustgan.methods import atgan, external, fgsm_rs, gan_at, pgd_at, standard, trades  # noqa: F401  (register methods)

__all__ = ["METHODS", "Geometry", "Method", "MethodConfig", "eps_train", "method_class", "norm_train", "register_method"]
