"""robustgan: GAN-based adversarial defenses (ATGAN, GAN adversarial training) in PyTorch.

Public API (see the README's "Python API"): ``robustgan.evaluate(model, x, y, eps=[...])``,
``robustgan.load(run_dir)``, ``robustgan.fit(config, out)``, ``robustgan.data.load``,
``robustgan.attacks.pgd`` / ``fgsm`` / ``apgd``. Importing the package imports every registry (datasets,
models, methods), so a config naming any of them parses whatever module is used first.
"""

from robustgan import attacks, data, methods, models  # noqa: F401  (fill the registries)
from robustgan.errors import RobustganError  # noqa: F401
from robustgan.evaluation.notebook import evaluate  # noqa: F401
from robustgan.train import fit  # noqa: F401
from robustgan.runtime import load_model as load  # noqa: F401
from robustgan.version import __version__  # noqa: F401
