"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy", eq. 5): minimise CE(f(x), y) + beta * KL(f(x) || f(x')) / batch, where x' maximises
the KL term in the eps ball: PGD on the KL from x + 0.001 N(0, I), as in the official code
(github.com/yaodongyu/TRADES, trades.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustgan.attacks import default_step_size, pgd
from robustgan.attacks.losses import trades_kl
from robustgan.attacks.threat import attack_mode
from robustgan.config import check_eps_value, check_norm
from robustgan.errors import ConfigError
from robustgan.methods.base import MethodConfig, batch_accuracy, register_method, update
from robustgan.methods.pgd_at import eps_now
from robustgan.methods.standard import Standard


@dataclass
class TRADESConfig(MethodConfig):
    name: str = "trades"
    eps: float = 0.3  # eps_t, pixel scale
    steps: int = 10  # the inner maximisation's PGD steps
    step_size: float = 0.0  # 0 = attacks.default_step_size: 2.5 * eps / steps
    beta: float = 6.0  # the robustness weight (official: 6 on CIFAR-10, 1 on MNIST)
    ramp_epochs: int = 0  # grow eps linearly from 0 over the first epochs
    norm: str = "linf"  # the threat model of the inner maximisation and of eps: "linf" or "l2"

    def validate(self):
        super().validate()
        check_norm(self.norm, "method.norm", self.name)
        check_eps_value(self.eps, "method.eps", norm=self.norm)
        if self.steps <= 0 or self.step_size < 0:
            raise ConfigError(f"method.steps must be positive and method.step_size >= 0, got {self.steps}, "
                              f"{self.step_size}")
        if self.beta < 0 or self.ramp_epochs < 0:
            raise ConfigError(f"method.beta and method.ramp_epochs must be >= 0, got {self.beta}, {self.ramp_epochs}")


def trades_adversarial(model, x: torch.Tensor, eps: float, steps: int, step_size: float,
                       norm: str = "linf") -> torch.Tensor:
    """The inner maximisation: x' in the eps ball and [0, 1] maximising the KL to f(x), by
    ``steps`` signed-gradient steps of the shared PGD from x + 0.001 N(0, I) (eval mode,
    parameters frozen). The clean distribution is computed once (the official code recomputes
    it every step: the same values in eval mode, one forward pass per step more)."""
    x = x.detach()
    with attack_mode(model), torch.no_grad():
        logits_clean = model(x).float()
    noise = torch.randn_like(x).mul_(0.001 / eps)  # the start x + eps * noise = x + 0.001 N(0, I)
    return pgd(model, x, logits_clean, eps, steps, step_size, best=False, loss="kl", noise=noise, check=False,
               norm=norm)


@register_method
class TRADES(Standard):
    Config = TRADESConfig

    @classmethod
    def train_eps(cls, cfg):
        return cfg.method.eps

    def step(self, x, y):
        mcfg = self.cfg.method
        eps = eps_now(mcfg, self.epoch)
        x_adv = x if eps == 0 else trades_adversarial(self.model, x, eps, mcfg.steps,
                                                      mcfg.step_size or default_step_size(eps, mcfg.steps), mcfg.norm)
        self.model.train()
        logits_clean, logits_adv = self.model(x), self.model(x_adv)  # two passes, as the official code (BN)
        natural = F.cross_entropy(logits_clean.float(), y)
        robust = trades_kl(logits_adv, logits_clean).mean()
        update(self.opt, natural + mcfg.beta * robust)
        return {"loss": (natural + mcfg.beta * robust).detach(), "natural": natural.detach(), "kl": robust.detach(),
                "clean_acc": batch_accuracy(logits_clean.detach(), y), "adv_acc": batch_accuracy(logits_adv.detach(), y)}
