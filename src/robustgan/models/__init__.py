"""Networks: classifiers, generators, the AC discriminator wrapper, one registry."""

from robustgan.models.registry import MODELS, build, kind, register_model
from robustgan.models import classifiers, generators  # noqa: F401  (register entries)
from robustgan.models.classifiers import Classifier, Normalize
from robustgan.models.discriminator import ACDiscriminator
from robustgan.models.generators import ImageGenerator, PerturbationGenerator

__all__ = ["MODELS", "build", "kind", "register_model", "Classifier", "Normalize", "ACDiscriminator",
           "ImageGenerator", "PerturbationGenerator"]
