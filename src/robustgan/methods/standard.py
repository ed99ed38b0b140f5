"""Standard training (ERM): minimise cross-entropy on clean images."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from robustgan.methods.base import Method, accuracy, build_classifier, make_optimizer, register_method


@dataclass
class StandardConfig:
    name: str = "standard"

    def validate(self):
        pass


@register_method
class Standard(Method):
    name = "standard"
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

    def step(self, x, y):
        self.model.train()
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "acc": accuracy(logits.detach(), y)}
