"""GAN adversarial training with perturbation generators (paper 002, after Wang & Yu).

    min_C max_G  sum L(C(x), y) + sum_k L(C(clip(x + G_k(I))), y)          (paper 002 eq. 4-5)

Each generator outputs a perturbation eps * tanh(h) (|delta|_inf <= eps) from its input I:
``x`` (G1, eq. 6), ``x,z`` (G2, eq. 7: x and latent noise channels), ``grad`` (G3, eq. 8:
sign of the current classifier's loss gradient at x, recomputed every step) or ``grad,x``
(G4, eq. 9). Every generator maximises the classifier's cross-entropy (its loss is -CE);
the classifier minimises CE on the clean batch plus every generator's batch. With
``generators = 2`` this is the dual-generator framework of Sec. 3 / Fig. 1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustgan import models
from robustgan.attacks.threat import attack_mode, loss_and_grad
from robustgan.config import check_eps_value, check_norm
from robustgan.errors import ConfigError
from robustgan.methods.base import (GeneratorOptimConfig, Method, batch_accuracy, build_classifier, frozen,
                                    make_optimizer, register_method, update)

FORMULATIONS = ("x", "x,z", "grad", "grad,x")


@dataclass
class GANATConfig(GeneratorOptimConfig):  # generators: Adam 2e-4 (0.5, 0.9), the default
    name: str = "gan_at"
    inputs: str = "grad"  # x (G1) | x,z (G2) | grad (G3) | grad,x (G4)
    eps: float = 16 / 255  # bound of the generator's perturbation
    generators: int = 1  # 1, or 2 for dual generators
    width: int = 1  # generator filters x1 (128 residual channels) or x2 (256)
    z_channels: int = 4  # latent noise channels for x,z (not given in the paper)
    norm: str = "linf"  # the generator's output eps * tanh(h) is an L-inf bound by construction

    def validate(self):
        super().validate()
        check_norm(self.norm, "method.norm", "gan_at (paper 002: a perturbation eps * tanh(h))", ("linf",))
        if self.inputs not in FORMULATIONS:
            raise ConfigError(f"method.inputs must be one of {', '.join(FORMULATIONS)}; got {self.inputs!r}")
        check_eps_value(self.eps, "method.eps")
        if self.generators not in (1, 2):
            raise ConfigError(f"method.generators must be 1 or 2, got {self.generators}")
        if self.width not in (1, 2):
            raise ConfigError(f"method.width must be 1 or 2, got {self.width}")
        if self.z_channels <= 0:
            raise ConfigError(f"method.z_channels must be positive, got {self.z_channels}")


def generator_in_channels(mcfg: GANATConfig, channels: int) -> int:
    return {"x": channels, "x,z": channels + mcfg.z_channels, "grad": channels, "grad,x": 2 * channels}[mcfg.inputs]


@register_method
class GANAT(Method):
    Config = GANATConfig
    report_sections = ("trends",)  # logit trends along generator directions (paper 002 Fig. 5)
    perturbs = True

    @classmethod
    def train_eps(cls, cfg):
        return cfg.method.eps

    def __init__(self, cfg, geometry, device):
        super().__init__(cfg, geometry, device)
        m = cfg.method
        self.classifier = self.build_defended(cfg, geometry).to(device)
        self.generators = [
            models.build("perturbation_g", in_channels=generator_in_channels(m, geometry.channels),
                         out_channels=geometry.channels, eps=m.eps, width=m.width).to(device)
            for _ in range(m.generators)]
        self.opt_c = make_optimizer(self.classifier.parameters(), cfg.optim)
        self.opt_g = [make_optimizer(g.parameters(), m.generator_optim()) for g in self.generators]

    @classmethod
    def build_defended(cls, cfg, geometry):
        return build_classifier(cfg, geometry)  # the generators are training-time attackers only

    def defended_model(self):
        return self.classifier

    def networks(self):
        return {"classifier": self.classifier, **{f"G{k}": g for k, g in enumerate(self.generators)}}

    def optimizers(self):
        return {"classifier": self.opt_c, **{f"G{k}": o for k, o in enumerate(self.opt_g)}}

    def scheduled_optimizers(self):
        return [self.opt_c]

    # ------------------------------------------------------------------ the pieces of a step
    def input_gradient_sign(self, x, y) -> torch.Tensor:
        """sign(grad_x CE(C(x), y)) of the current classifier (eval mode, parameters untouched)."""
        with attack_mode(self.classifier):
            _, grad = loss_and_grad(self.classifier, x.detach().clone().requires_grad_(True), y)
        return grad.sign()

    def generator_input(self, x, y) -> torch.Tensor:
        """The generators' input I for the configured formulation, (B, C_in, H, W)."""
        inputs = self.cfg.method.inputs
        if inputs == "x":
            return x
        if inputs == "x,z":
            z = torch.randn(x.shape[0], self.cfg.method.z_channels, *x.shape[2:], device=x.device)
            return torch.cat([x, z], 1)
        grad_sign = self.input_gradient_sign(x, y)
        return grad_sign if inputs == "grad" else torch.cat([grad_sign, x], 1)

    def perturbation(self, x, y) -> torch.Tensor:
        """The first generator's perturbation for x (eval mode): logit trends follow it."""
        self.generators[0].eval()
        inp = self.generator_input(x, y)
        with torch.no_grad():
            return self.generators[0](inp)

    def perturb(self, k: int, inp, x) -> torch.Tensor:
        """x_adv = clip(x + G_k(I), 0, 1), with gradient to G_k."""
        self.generators[k].train()
        return (x + self.generators[k](inp)).clamp(0, 1)

    def classifier_step(self, x, x_advs, y) -> dict:
        """Minimise CE(C(x), y) + sum_k CE(C(x_adv_k), y) (eq. 5), one forward over the
        concatenated batch; the generators' images are detached."""
        self.classifier.train()
        logits = self.classifier(torch.cat([x, *(xa.detach() for xa in x_advs)])).float()
        parts = logits.split(len(y))
        losses = [F.cross_entropy(p, y) for p in parts]
        loss = sum(losses)
        update(self.opt_c, loss)
        out = {"L_C": loss.detach(), "clean_acc": batch_accuracy(parts[0].detach(), y)}
        for k, p in enumerate(parts[1:]):
            out[f"G{k}_acc"] = batch_accuracy(p.detach(), y)
        return out

    def generator_step(self, k: int, x_adv, y) -> dict:
        """Generator k maximises the classifier's CE (its loss is -CE); the classifier is a
        fixed function here (no parameter gradients, BN statistics restored)."""
        with frozen(self.classifier):
            loss = -F.cross_entropy(self.classifier(x_adv).float(), y)
            update(self.opt_g[k], loss)
        return {f"L_G{k}": loss.detach()}

    def step(self, x, y):
        inp = self.generator_input(x, y)
        x_advs = [self.perturb(k, inp, x) for k in range(len(self.generators))]
        metrics = self.classifier_step(x, x_advs, y)
        for k, x_adv in enumerate(x_advs):
            metrics.update(self.generator_step(k, x_adv, y))
            metrics[f"G{k}_std"] = (x_adv - x).detach().float().std(0).mean()  # ~0: one perturbation for all
        return metrics

    def collapse_warnings(self, averages):
        floor = 0.01 * self.cfg.method.eps
        return [f"generator {k} collapse: its perturbation is the same for every input (per-pixel std "
                f"{averages[f'G{k}_std']:.2g} across the batch, eps {self.cfg.method.eps:g})"
                for k in range(len(self.generators)) if averages.get(f"G{k}_std", floor) < floor]
