"""Training methods, one module each. A method owns its networks and optimizers and exposes
``step(x, y) -> dict`` and ``defended_model()``; ``robustgan.train`` runs any of them."""

from robustgan.methods.base import METHODS, Geometry, Method, method_class, method_config_class, register_method
from robustgan.methods import atgan, gan_at, pgd_at, standard  # noqa: F401  (register methods)

__all__ = ["METHODS", "Geometry", "Method", "method_class", "method_config_class", "register_method"]
