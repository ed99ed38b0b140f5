"""What the training loop watches besides the loss: the passes through a method's networks
(the training cost) and, for single-step methods, catastrophic overfitting."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.attacks import AttackSettings, Batching, robust_accuracy
from robustgan.config import Config
from robustgan.errors import ConfigError
from robustgan.methods import Method, eps_train, norm_train


def first_layer(network: nn.Module) -> nn.Module:
    """The first module (in registration order) that holds parameters itself: every forward
    pass through ``network`` runs it, and every backward pass through the network reaches it."""
    for module in network.modules():
        if any(True for _ in module.parameters(recurse=False)):
            return module
    raise ConfigError(f"{type(network).__name__} has no parameters: its passes cannot be counted")


class PassCounter:
    """Image-passes through a method's networks inside training steps: forward passes (images
    that entered a network) and backward passes (images whose gradient flowed back through
    it, for a parameter update or an attack's input gradient), summed over the networks.
    A hook on each network's first parameterised layer counts the images of every forward
    there and, when its output carries a gradient, a hook on that output counts the images
    of each backward pass that reaches it. Counts only while active (``with counter:``): the
    training steps, and apart from them the overfitting guard (``train.check_guard``), not
    held-out evaluation. PGD-k AT: k + 1 forward and k + 1
    backward passes per image per step."""

    def __init__(self, networks: dict[str, nn.Module]):
        self.active, self.forward, self.backward = False, 0, 0
        for network in networks.values():
            first_layer(network).register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        if not self.active or not isinstance(output, torch.Tensor):
            return
        images = output.shape[0]
        self.forward += images
        if output.requires_grad:
            output.register_hook(lambda grad: self._on_backward(images))

    def _on_backward(self, images: int) -> None:
        self.backward += images

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    def take(self) -> tuple[int, int]:
        """(forward, backward) image-passes since the last take."""
        counts, self.forward, self.backward = (self.forward, self.backward), 0, 0
        return counts


class OverfitGuard:
    """Catastrophic overfitting (Wong, Rice and Kolter 2020, Section 5): a single-step method
    stops approximating the inner maximisation, so its own examples are classified correctly
    while PGD fools the model. After every epoch, on the first ``images`` training images at the
    method's eps, PGD-10 (step 2.5 eps / 10) and FGSM-RS (one step of 1.25 eps from a uniform
    start; as PGD-1 it keeps the start when that is already misclassified), both from seeded
    starts (the training's random stream is untouched). A collapse:

    - PGD accuracy fell by more than ``drop`` since the previous epoch (Wong et al.'s early
      stop: a model that was robust and lost it within an epoch), or
    - FGSM-RS accuracy exceeds PGD accuracy by more than ``gap`` (a model that never became
      robust while its training attack says it did; Wong et al.'s early stop cannot see it).
      Measured on digits at eps 0.2: honest PGD-AT, TRADES and N-FGSM models 0.18-0.24;
      FGSM-RS collapsed at step 1.25 eps 0.89."""

    STEPS = 10

    def __init__(self, x: torch.Tensor, y: torch.Tensor, eps: float, drop: float, gap: float, num_classes: int,
                 device, images: int = 256, norm: str = "linf"):
        self.x, self.y, self.eps, self.drop, self.gap = x[:images], y[:images], eps, drop, gap
        self.norm = norm  # the run's threat model: eps and both attacks are in it
        self.num_classes, self.device = num_classes, device
        self.previous: float | None = None

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(PGD-10 accuracy, FGSM-RS accuracy) on the guard's images."""
        was_training = model.training
        batching, kw = Batching(self.device), dict(num_classes=self.num_classes)
        pgd = robust_accuracy(model, self.x, self.y, self.eps, AttackSettings("pgd", steps=self.STEPS, norm=self.norm),
                              batching, **kw)
        single = robust_accuracy(model, self.x, self.y, self.eps,
                                 AttackSettings("pgd", steps=1, step_size=1.25 * self.eps, norm=self.norm), batching, **kw)
        model.train(was_training)
        return pgd, single


def build_guard(cfg: Config, method: Method, x_train, y_train, device) -> OverfitGuard | None:
    """The guard when ``train.guard`` asks for it (auto: single-step methods only)."""
    on = cfg.train.guard == "on" or (cfg.train.guard == "auto" and method.single_step)
    if not on:
        return None
    eps = eps_train(cfg)
    if not eps > 0:
        raise ConfigError(f"train.guard=on needs a method with an eps > 0; {cfg.method.name} has none")
    return OverfitGuard(x_train, y_train, eps, cfg.train.guard_drop, cfg.train.guard_gap, method.geometry.num_classes,
                        device, cfg.train.guard_images, norm_train(cfg))
