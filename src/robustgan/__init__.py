"""robustgan: GAN-based adversarial defenses (ATGAN, GAN adversarial training) in PyTorch.

Public API (see DESIGN.md): ``robustgan.load``, ``robustgan.data.load``,
``robustgan.attacks.pgd`` / ``fgsm``.
"""

__version__ = "0.1.0"

from robustgan import attacks, data, models  # noqa: E402,F401
from robustgan.errors import RobustganError  # noqa: E402,F401


def load(run_dir):
    """Rebuild a run's defended model (eval mode, pixels in [0, 1] -> logits)."""
    from robustgan.runs import load_model

    return load_model(run_dir)
