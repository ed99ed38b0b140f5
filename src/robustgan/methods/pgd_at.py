"""PGD adversarial training (Madry et al. 2018; paper 000 eq. 3) and FracAT (paper 000,
Section 4.2: a fraction ``frac`` of each batch adversarial, the rest clean)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustgan.attacks import default_step_size, pgd
from robustgan.config import check_eps_value, check_frac, check_norm
from robustgan.errors import ConfigError
from robustgan.methods.base import MethodConfig, batch_accuracy, register_method
from robustgan.methods.standard import Standard


@dataclass
class InnerAttackConfig(MethodConfig):
    """The inner maximisation's settings (PGD on the defended model), shared by every
    PGD-trained method: pgd_at and atgan."""

    eps: float = 0.3  # eps_t, pixel scale
    steps: int = 40
    step_size: float = 0.0  # 0 = attacks.default_step_size: 2.5 * eps / steps (Madry et al.)
    random_start: bool = True
    frac: float = 1.0  # FracAT: fraction of each batch made adversarial
    ramp_epochs: int = 0  # grow eps linearly from 0 over the first epochs
    norm: str = "linf"  # the threat model of the inner attack and of eps: "linf" or "l2"

    def validate(self):
        super().validate()
        check_norm(self.norm, "method.norm", self.name)
        check_eps_value(self.eps, "method.eps", norm=self.norm)
        check_frac(self.frac, "method.frac")
        if self.steps <= 0:
            raise ConfigError(f"method.steps must be positive, got {self.steps}")
        if self.step_size < 0:
            raise ConfigError(f"method.step_size must be >= 0, got {self.step_size}")
        if self.ramp_epochs < 0:
            raise ConfigError(f"method.ramp_epochs must be >= 0, got {self.ramp_epochs}")


def eps_now(mcfg: InnerAttackConfig, epoch: int) -> float:
    """eps_t with the optional linear ramp-up over the first ``ramp_epochs`` epochs."""
    if mcfg.ramp_epochs <= 0:
        return mcfg.eps
    return mcfg.eps * min(1.0, (epoch + 1) / mcfg.ramp_epochs)


def step_size_for(mcfg: InnerAttackConfig, eps: float) -> float:
    return mcfg.step_size if mcfg.step_size > 0 else default_step_size(eps, mcfg.steps)


def split_adversarial(mcfg: InnerAttackConfig, batch_size: int) -> int:
    """Number of adversarial samples in a batch of ``batch_size`` (FracAT)."""
    return int(math.floor(mcfg.frac * batch_size + 0.5))


def make_adversarial(model, x, y, mcfg: InnerAttackConfig, epoch: int) -> tuple[torch.Tensor, int]:
    """Attack the first ``frac`` of the batch (eval mode, parameters untouched); return the
    mixed batch (adversarial first, then clean) and the number of adversarial samples."""
    n_adv = split_adversarial(mcfg, len(y))
    eps = eps_now(mcfg, epoch)
    if n_adv == 0 or eps == 0:
        return x, n_adv
    x_adv = pgd(model, x[:n_adv], y[:n_adv], eps, mcfg.steps, step_size_for(mcfg, eps), mcfg.random_start,
                best=False, check=False, norm=mcfg.norm)  # Madry et al. train on the last iterate
    return torch.cat([x_adv, x[n_adv:]]), n_adv


@dataclass
class PGDATConfig(InnerAttackConfig):
    name: str = "pgd_at"


class InnerAttackContract:
    """What a method whose [method] is an ``InnerAttackConfig`` states: its eps_t, and "-frac"
    after its name under FracAT (paper 000 Sec. 4.2)."""

    name: str

    @classmethod
    def train_eps(cls, cfg):
        return cfg.method.eps

    @classmethod
    def label(cls, cfg):
        return cls.name + ("-frac" if cfg.method.frac < 1 else "")


@register_method
class PGDAT(InnerAttackContract, Standard):
    Config = PGDATConfig

    def step(self, x, y):
        mcfg = self.cfg.method
        x_mix, n_adv = make_adversarial(self.model, x, y, mcfg, self.epoch)
        logits, loss = self.train_on(x_mix, y)
        metrics = {"loss": loss, "adv_acc": batch_accuracy(logits[:n_adv], y[:n_adv])}
        if n_adv < len(y):
            metrics["clean_acc"] = batch_accuracy(logits[n_adv:], y[n_adv:])
        return metrics
