"""Single-step adversarial training: FGSM with a random start (Wong, Rice and Kolter 2020,
"Fast is better than free", Alg. 3) and N-FGSM (de Jorge et al. 2022, "Make some noise",
eq. 3). One gradient of the loss at a noisy point per image, then one signed step:

    x0 = x + eta,  eta ~ U(-noise * eps, noise * eps)^d
    x' = x0 + step * sign(grad_x CE(f(x0), y)),  then Proj_ball(x, eps) if clip, and [0, 1]

FGSM-RS: noise 1, step 1.25 eps, projected to the eps ball. N-FGSM: noise 2, step eps, no
projection (its examples lie up to 3 eps from x: the noise is the regulariser that avoids
catastrophic overfitting without GradAlign's double backward). Both with the cyclic
learning rate in their presets. The gradient is taken in eval mode with frozen parameters,
as for our PGD-AT (Wong et al.'s code takes it in train mode: with BatchNorm or dropout, as
the C&W CNN's, the two gradients differ). Single-step methods are guarded against
catastrophic overfitting by the training loop (``train.guard``, robustgan/monitor.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustgan.attacks.threat import attack_mode, loss_and_grad
from robustgan.config import check_eps_value, check_norm
from robustgan.errors import ConfigError
from robustgan.methods.base import MethodConfig, batch_accuracy, register_method
from robustgan.methods.pgd_at import eps_now
from robustgan.methods.standard import Standard


@dataclass
class FGSMRSConfig(MethodConfig):
    name: str = "fgsm_rs"
    eps: float = 0.3  # eps_t, pixel scale
    step: float = 1.25  # the signed step, in units of eps (Wong et al.: 1.25)
    noise: float = 1.0  # the random start's half-width, in units of eps (0 = plain FGSM)
    clip: bool = True  # project the example back to the eps ball
    ramp_epochs: int = 0  # grow eps linearly from 0 over the first epochs
    norm: str = "linf"  # the single-step methods are defined in L-inf only

    def validate(self):
        super().validate()
        check_norm(self.norm, "method.norm", f"{self.name} (a signed step, Wong et al. 2020; de Jorge et al. 2022)",
                   ("linf",))
        check_eps_value(self.eps, "method.eps")
        if not self.step > 0 or self.noise < 0 or self.ramp_epochs < 0:
            raise ConfigError(f"method.step must be positive, method.noise and method.ramp_epochs >= 0; got "
                              f"{self.step}, {self.noise}, {self.ramp_epochs}")


@dataclass
class NFGSMConfig(FGSMRSConfig):
    name: str = "n_fgsm"
    step: float = 1.0  # de Jorge et al.: alpha = eps
    noise: float = 2.0  # k = 2
    clip: bool = False


def single_step_example(model, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, noise: float,
                        clip: bool) -> torch.Tensor:
    """One noisy FGSM example per image (see the module docstring): in [0, 1], and within eps
    of x when ``clip``. ``step`` and ``noise`` are in pixels."""
    x = x.detach()
    with attack_mode(model):
        start = (x + torch.empty_like(x).uniform_(-noise, noise)).clamp_(0, 1) if noise > 0 else x.clone()
        start.requires_grad_(True)
        _, grad = loss_and_grad(model, start, y)
        x_adv = start.detach() + step * grad.sign()
        if clip:
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    return x_adv.clamp_(0, 1)


@register_method
class FGSMRS(Standard):
    Config = FGSMRSConfig
    single_step = True

    @classmethod
    def train_eps(cls, cfg):
        return cfg.method.eps

    def step(self, x, y):
        mcfg = self.cfg.method
        eps = eps_now(mcfg, self.epoch)
        x_adv = x if eps == 0 else single_step_example(self.model, x, y, eps, mcfg.step * eps, mcfg.noise * eps,
                                                       mcfg.clip)
        logits, loss = self.train_on(x_adv, y)
        return {"loss": loss, "adv_acc": batch_accuracy(logits, y)}


@register_method
class NFGSM(FGSMRS):
    Config = NFGSMConfig
