"""robustgan: GAN-based adversarial defenses (ATGAN, GAN adversarial training) in PyTorch.

Public API (see DESIGN.md): ``robustgan.load``, ``robustgan.data.load``,
``robustgan.attacks.pgd`` / ``fgsm``. Importing the package imports every registry (datasets,
models, methods), so a config naming any of them parses whatever module is used first.
"""

from robustgan import attacks, data, methods, models  # noqa: F401  (fill the registries)
from robustgan.errors import RobustganError  # noqa: F401
from robustgan.runtime import load_model as load  # noqa: F401
from robustgan.version import __version__  # noqa: F401
