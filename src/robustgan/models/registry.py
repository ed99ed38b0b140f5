"""One registry for every network (timm style): ``@register_model(kind)`` and ``build``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from robustgan.errors import ConfigError

KINDS = ("classifier", "image_generator", "perturbation_generator")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # classifier: image -> logits; image_generator: image -> image; perturbation_generator: input -> delta
    fn: Callable[..., nn.Module]


MODELS: dict[str, ModelEntry] = {}


def register_model(kind: str):
    assert kind in KINDS, kind

    def wrap(fn):
        MODELS[fn.__name__] = ModelEntry(fn.__name__, kind, fn)
        return fn

    return wrap


def build(name: str, num_classes: int = 10, in_channels: int = 3, **kw) -> nn.Module:
    """Build a registered network. Every network takes pixels in [0, 1]."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name].fn(num_classes=num_classes, in_channels=in_channels, **kw)


def kind(name: str) -> str:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name].kind
