"""ATGAN (paper 000): an image-to-image generator G in front of an AC-GAN discriminator D,
adversarially trained as one classifier D_c(G(x)) (Algorithm 1).

One step:
  (a) x_adv = PGD on D_c(G(.)) with G and D fixed, eval mode (eq. 5-6; FracAT: only a
      fraction of the batch is attacked, Sec. 4.2);
  (b) D step on L_D = a1 (L_a + b L_b) - L_d                      (eq. 7-9, 14);
  (c) G step on L_G = a2 (L_a + b L_b) - L_g + g L_f              (eq. 10-12, 15);
with L_a = CE(D_c(x), y), L_b = CE(D_c(G(x_adv)), y),
L_d = log D_D(x) + log(1 - D_D(G(x_adv))) (eq. 9; D maximises it, so it enters L_D with -),
L_g = log D_D(G(x_adv)) (eq. 11, the non-saturating generator term),
L_f = ||phi(G(x_adv)) - phi(x)||^2 / (C H W) on the loss network's first conv (eq. 4, 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgan import models
from robustgan.config import check_norm
from robustgan.errors import ConfigError
from robustgan.methods.base import (GeneratorOptimConfig, Method, batch_accuracy, build_classifier, frozen,
                                    make_optimizer, register_method, update)
from robustgan.methods.pgd_at import InnerAttackConfig, InnerAttackContract, make_adversarial
from robustgan.methods.standard import clean_config

GENERATOR_FOR_DATASET = {"mnist": "atgan_g_mnist", "digits": "atgan_g_mnist", "synthetic": "atgan_g_mnist",
                         "svhn": "atgan_g_svhn", "cifar10": "atgan_g_cifar10"}


@dataclass
class ATGANConfig(InnerAttackConfig, GeneratorOptimConfig):
    name: str = "atgan"
    generator: str = "auto"  # atgan_g_mnist | atgan_g_svhn | atgan_g_cifar10; auto = by dataset (Table 1)
    alpha1: float = 1.0  # weight of L_c in the D loss (Algorithm 1)
    alpha2: float = 1.0  # weight of L_c in the G loss
    beta: float = 1.0  # weight of L_b inside L_c
    gamma: float = 10.0  # weight of the perceptual loss L_f
    g_lr: float = 1e-3  # G uses Adam (paper: 1e-3 on MNIST, 2e-4 on SVHN and CIFAR-10)
    g_betas: tuple[float, float] = (0.9, 0.999)
    loss_net_run: str | None = None  # a finished standard run of the same backbone; else trained first
    loss_net_epochs: int = 5  # epochs of clean training for the loss network when none is given

    def validate(self):
        super().validate()  # the inner attack's and the generator optimizer's settings
        check_norm(self.norm, "method.norm", "atgan (paper 000)", ("linf",))
        if self.generator != "auto" and (self.generator not in models.MODELS
                                         or models.kind(self.generator) != "image_generator"):
            raise ConfigError(f"method.generator: {self.generator!r} is not an image generator "
                              f"(atgan_g_mnist, atgan_g_svhn, atgan_g_cifar10 or auto)")
        for key in ("alpha1", "alpha2", "beta", "gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if self.loss_net_epochs <= 0:
            raise ConfigError(f"method.loss_net_epochs must be positive, got {self.loss_net_epochs}")


def generator_name(cfg, geometry) -> str:
    """method.generator, or by dataset (Table 1); for a user's images by channels: the MNIST G
    for grey images, the CIFAR-10 G for colour (``build_generator`` checks the size fits)."""
    if cfg.method.generator != "auto":
        return cfg.method.generator
    if cfg.data.name in GENERATOR_FOR_DATASET:
        return GENERATOR_FOR_DATASET[cfg.data.name]
    return "atgan_g_mnist" if geometry.channels == 1 else "atgan_g_cifar10"


def build_generator(cfg, geometry) -> nn.Module:
    """G for these images; a one-line error when its strided convolutions do not give back
    the input size (Table 1's generators are built for 28x28 and 32x32 images)."""
    name = generator_name(cfg, geometry)
    G = models.build(name, in_channels=geometry.channels)
    shape = (1, geometry.channels, geometry.image_size, geometry.image_size)
    with torch.no_grad():
        out = G.eval()(torch.zeros(shape)).shape
    if tuple(out) != shape:
        raise ConfigError(f"ATGAN generator {name} maps {shape[1]}x{shape[2]}x{shape[3]} images to "
                          f"{out[1]}x{out[2]}x{out[3]}; set data.image_size to 28 (grey) or 32 (colour), or "
                          "method.generator")
    return G.train()


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))


COLLAPSED_STD = 1e-3  # per-pixel std of G's output across a batch below which G is called collapsed
PINNED_ACC = 0.995  # an epoch's real and fake discriminator accuracies both above this: D is pinned


@register_method
class ATGAN(InnerAttackContract, Method):
    Config = ATGANConfig

    @classmethod
    def architecture(cls, cfg):
        return f"ATGAN: generator + AC discriminator on {cfg.model.name}"

    @classmethod
    def graybox_model(cls, model):
        return model[1]  # D alone: D_c(G(x)) without the gradient through G

    def __init__(self, cfg, geometry, device):
        super().__init__(cfg, geometry, device)
        self.pipeline = self.build_defended(cfg, geometry).to(device)
        self.G, self.D = self.pipeline[0], self.pipeline[1]
        self.loss_net = build_classifier(cfg, geometry).to(device).eval().requires_grad_(False)
        self.opt_d = make_optimizer(self.D.parameters(), cfg.optim)
        self.opt_g = make_optimizer(self.G.parameters(), cfg.method.generator_optim())

    @classmethod
    def build_defended(cls, cfg, geometry):
        G = build_generator(cfg, geometry)
        D = models.ACDiscriminator(build_classifier(cfg, geometry))
        return nn.Sequential(G, D)  # D_c(G(x)): D.forward returns the class logits

    def notes(self):
        g = self.geometry
        return [f"ATGAN generator: {generator_name(self.cfg, g)} (paper 000 Table 1; for {g.channels}x{g.image_size}x"
                f"{g.image_size} {self.cfg.data.name} images; method.generator overrides)"]

    def defended_model(self):
        return self.pipeline

    def networks(self):
        return {"G": self.G, "D": self.D, "loss_net": self.loss_net}

    def optimizers(self):
        return {"D": self.opt_d, "G": self.opt_g}

    def scheduled_optimizers(self):
        return [self.opt_d]  # paper 000 Sec. 4.4: only D's learning rate decays

    # ------------------------------------------------------------------ loss network
    @classmethod
    def subruns(cls, cfg):
        """The loss network: ``loss_net_run`` if given, else a clean run of D's backbone
        trained first into <run>/loss_net (the loop trains it, resumably)."""
        if cfg.method.loss_net_run:
            return {"loss_net": Path(cfg.method.loss_net_run)}
        return {"loss_net": clean_config(cfg, cfg.method.loss_net_epochs, cfg.train.seed)}

    def use_subruns(self, trained):
        try:
            self.loss_net.load_state_dict(trained["loss_net"].state_dict())
        except RuntimeError:
            source = self.cfg.method.loss_net_run or "the loss_net sub-run"
            raise ConfigError(f"method.loss_net_run: {source} is not a {self.cfg.model.name} classifier run") from None
        self.loss_net.eval().requires_grad_(False)

    # ------------------------------------------------------------------ Algorithm 1
    def attack(self, x, y):
        """(a) PGD on D_c(G(.)); eval mode, parameters and BN statistics untouched."""
        return make_adversarial(self.pipeline, x, y, self.cfg.method, self.epoch)

    def d_step(self, x, x_gen, y) -> dict:
        """(b) one D update on L_D = a1 (L_a + b L_b) - L_d; x_gen = G(x_adv), detached."""
        m = self.cfg.method
        self.D.train()
        logits_real, rf_real = self.D.both(x)
        logits_fake, rf_fake = self.D.both(x_gen.detach())
        loss_a = F.cross_entropy(logits_real.float(), y)
        loss_b = F.cross_entropy(logits_fake.float(), y)
        loss_d = -(bce(rf_real, 1.0) + bce(rf_fake, 0.0))  # eq. 9: log D(x) + log(1 - D(G(x_adv)))
        loss_D = m.alpha1 * (loss_a + m.beta * loss_b) - loss_d
        update(self.opt_d, loss_D)
        return {"L_D": loss_D.detach(), "L_a": loss_a.detach(), "L_b": loss_b.detach(), "L_d": loss_d.detach(),
                "clean_acc": batch_accuracy(logits_real.detach(), y), "D_real_acc": (rf_real.detach() > 0).float().mean(),
                "D_fake_acc": (rf_fake.detach() < 0).float().mean()}

    def g_step(self, x, x_gen, y, loss_a: torch.Tensor) -> dict:
        """(c) one G update on L_G = a2 (L_a + b L_b) - L_g + g L_f. D is a fixed function
        (no parameter gradients, BN statistics restored); L_a does not depend on G, so its
        value from (b) is reused for the logged total."""
        m = self.cfg.method
        with frozen(self.D):
            logits_gen, rf_gen = self.D.both(x_gen)
            loss_b = F.cross_entropy(logits_gen.float(), y)
            loss_g = -bce(rf_gen, 1.0)  # eq. 11: log D(G(x_adv))
            with torch.no_grad():
                target = self.loss_net.first_activations(x)
            loss_f = F.mse_loss(self.loss_net.first_activations(x_gen).float(), target.float())  # eq. 4 / 12
            loss_G = m.alpha2 * m.beta * loss_b - loss_g + m.gamma * loss_f
            update(self.opt_g, loss_G)
        return {"L_G": (loss_G + m.alpha2 * loss_a).detach(), "L_g": loss_g.detach(), "L_f": loss_f.detach(),
                "adv_acc": batch_accuracy(logits_gen.detach(), y)}

    def step(self, x, y):
        x_adv, n_adv = self.attack(x, y)
        self.G.train()
        x_gen = self.G(x_adv)  # (B, C, H, W) in [0, 1]; one G forward serves (b) and (c)
        metrics = self.d_step(x, x_gen, y)
        metrics.update(self.g_step(x, x_gen, y, metrics["L_a"]))
        metrics["G_out_std"] = x_gen.detach().float().std(0).mean()  # ~0 when G maps every input to one image
        return metrics

    def collapse_warnings(self, averages):
        found = []
        if averages.get("G_out_std", 1.0) < COLLAPSED_STD:
            found.append(f"generator collapse: G's output is the same for every input (per-pixel std "
                         f"{averages['G_out_std']:.2g} across the batch)")
        if min(averages.get("D_real_acc", 0.0), averages.get("D_fake_acc", 0.0)) >= PINNED_ACC:
            found.append("discriminator pinned: D tells real from generated images every time "
                         f"(D_real_acc and D_fake_acc >= {PINNED_ACC}), so G's adversarial loss gives no signal")
        return found
