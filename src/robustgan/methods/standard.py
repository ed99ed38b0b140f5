"""Standard training (ERM): minimise cross-entropy on clean images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustgan.config import Config, check_norm, from_dict, to_dict
from robustgan.methods.base import (Method, MethodConfig, batch_accuracy, build_classifier, make_optimizer,
                                    register_method, update)


@dataclass
class StandardConfig(MethodConfig):
    name: str = "standard"
    norm: str = "linf"  # no adversary: the threat model of train.eval_eps and of the run's default evaluations

    def validate(self):
        super().validate()
        check_norm(self.norm, "method.norm", self.name)


def clean_config(cfg: Config, epochs: int, seed: int) -> Config:
    """A `standard` run of ``cfg``'s data, backbone and optimizer, with no schedule: ATGAN's
    loss network, and the transfer check's surrogate (with another seed)."""
    raw = to_dict(cfg)
    raw["method"] = {"name": "standard", "norm": getattr(cfg.method, "norm", "linf")}  # eval_eps stays in its norm
    raw["schedule"] = {}
    raw["train"] = {**raw["train"], "epochs": epochs, "steps": 0, "seed": seed}
    return from_dict({k: {f: v for f, v in section.items() if v is not None} for k, section in raw.items()})


@register_method
class Standard(Method):
    Config = StandardConfig

    def __init__(self, cfg, geometry, device):
        super().__init__(cfg, geometry, device)
        self.model = self.build_defended(cfg, geometry).to(device)
        self.opt = make_optimizer(self.model.parameters(), cfg.optim)

    @classmethod
    def build_defended(cls, cfg, geometry):
        return build_classifier(cfg, geometry)

    def defended_model(self):
        return self.model

    def networks(self):
        return {"model": self.model}

    def optimizers(self):
        return {"opt": self.opt}

    def train_on(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """One classifier update on CE(f(x), y); returns (detached logits, detached loss)."""
        self.model.train()
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        update(self.opt, loss)
        return logits.detach(), loss.detach()

    def step(self, x, y):
        logits, loss = self.train_on(x, y)
        return {"loss": loss, "acc": batch_accuracy(logits, y)}
