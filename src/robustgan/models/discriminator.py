"""AC-GAN discriminator: a classifier backbone plus a real/fake head (paper 000, Sec. 3.3)."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.models.classifiers import Classifier


class ACDiscriminator(nn.Module):
    """D with two outputs on shared features: class logits D_c (k) and a real/fake logit
    D_D (the paper's sigmoid is folded into the BCE loss). ``forward`` returns the class
    logits alone, so ``Sequential(G, D)`` is the classifier D_c(G(x))."""

    def __init__(self, backbone: Classifier):
        super().__init__()
        self.backbone = backbone
        self.realfake = nn.Linear(backbone.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N, k), real/fake logit (N,))."""
        h = self.backbone.features(x)
        return self.backbone.fc(h), self.realfake(h).squeeze(1)
