"""The method interface, its registry, and helpers shared by methods."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from robustgan import models
from robustgan.attacks.threat import no_param_grads
from robustgan.config import METHOD_CONFIGS, Config, OptimConfig
from robustgan.distributed import average_gradients
from robustgan.errors import ConfigError


@dataclass(frozen=True)
class Geometry:
    """What the networks need to know about the data."""

    channels: int
    image_size: int
    num_classes: int


@dataclass
class MethodConfig:
    """Base of every ``[method]`` section: the method's registered name."""

    name: str = ""

    def validate(self):
        pass


@dataclass
class GeneratorOptimConfig(MethodConfig):
    """Adam settings of a method's generator(s) (ATGAN's G, GAN-AT's perturbation
    generators); the discriminator / classifier uses ``[optim]``."""

    g_lr: float = 2e-4
    g_betas: tuple[float, float] = (0.5, 0.9)

    def generator_optim(self) -> OptimConfig:
        return OptimConfig("adam", self.g_lr, self.g_betas)

    def validate(self):
        super().validate()
        self.generator_optim().validate("method.g")


class Method:
    """Base class. Subclasses set ``name`` and ``Config`` (a ``MethodConfig`` dataclass),
    build their networks and optimizers in ``__init__``, and implement ``step`` and
    ``build_defended``. A method that needs trained models before its first step (ATGAN's
    loss network) declares them in ``subruns``; the training loop trains them first and
    hands them to ``use_subruns``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    single_step: ClassVar[bool] = False  # one-step inner attack: the loop's overfitting guard is on by default

    def __init__(self, cfg: Config, geometry: Geometry, device: torch.device):
        self.cfg, self.geometry, self.device = cfg, geometry, device
        self.epoch, self.epochs = 0, cfg.train.epochs

    # --- architecture, for training and for robustgan.load
    @classmethod
    def build_defended(cls, cfg: Config, geometry: Geometry) -> nn.Module:
        """The defended pipeline's architecture (untrained): images in [0, 1] -> logits."""
        raise NotImplementedError

    @classmethod
    def weights_file(cls, cfg: Config, run) -> Path | None:
        """Where the defended model's weights live, if not the run's model.safetensors."""
        return None

    def notes(self) -> list[str]:
        """Lines the loop prints when training starts: choices made for the user (e.g. which
        architecture fits their images)."""
        return []

    def defended_model(self) -> nn.Module:
        raise NotImplementedError

    # --- what evaluation, reports and cards read of a method (its contract, never its config's fields)
    report_sections: ClassVar[tuple[str, ...]] = ()  # extra sections of its report: "trends" (paper 002 Fig. 5)
    trained_here: ClassVar[bool] = True  # False: a model trained elsewhere, evaluated only (no training set or cost)
    perturbs: ClassVar[bool] = False  # it trains a generator of perturbations (``perturbation``)

    @classmethod
    def provenance(cls, cfg: Config) -> dict | None:
        """Where a model trained elsewhere comes from ({"model": ..., "weights": ...}), for the
        card and ``eval --json``; None for a run trained here."""
        return None

    @classmethod
    def identity(cls, cfg: Config) -> str:
        """What the evaluation cache is keyed by besides the weights' hash ("" for none)."""
        return ""

    def perturbation(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """A trained generator's perturbation for x (``perturbs``; logit trends follow it), else None."""
        return None

    @classmethod
    def train_eps(cls, cfg: Config) -> float | None:
        """The radius (pixel scale, in ``norm_train``'s norm) the method trains against; None without an adversary."""
        return None

    @classmethod
    def label(cls, cfg: Config) -> str:
        """How curves, tables and plots name a run of this method (e.g. "pgd_at-frac")."""
        return cls.name

    @classmethod
    def architecture(cls, cfg: Config) -> str:
        """The defended pipeline's architecture, in words (the model card's)."""
        return cfg.model.name

    @classmethod
    def graybox_model(cls, model: nn.Module) -> nn.Module | None:
        """The part of the defended pipeline ``model`` that a gray-box attack differentiates
        (ATGAN: D without G in front); None where no gray-box attack applies."""
        return None

    # --- models trained before this one
    @classmethod
    def subruns(cls, cfg: Config) -> dict[str, Config | Path]:
        """{name: a Config to train as the run <run>/<name>, or the Path of a finished run}."""
        return {}

    def use_subruns(self, trained: dict[str, nn.Module]) -> None:
        """Receive the sub-runs' defended models (eval mode), by the names ``subruns`` gave."""

    # --- training
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch x (B, C, H, W) in [0, 1], y (B,). Returns 0-d
        detached tensors (no host sync); the loop averages and logs them."""
        raise NotImplementedError

    def collapse_warnings(self, averages: dict[str, float]) -> list[str]:
        """Signs that adversarial training between networks has collapsed, from one epoch's
        average step metrics (reported in metrics.jsonl as ``warnings``)."""
        return []

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch, epochs

    # --- checkpointing: every network and optimizer by name
    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def scheduled_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers whose learning rate follows ``[schedule]`` (default: all)."""
        return list(self.optimizers().values())

    def state_dict(self) -> dict:
        return {"networks": {k: m.state_dict() for k, m in self.networks().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.networks().items():
            m.load_state_dict(state["networks"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: the method under its config's name (``Config.name``'s default: the name
    is given once, where ``[method] name = ...`` parses into it), its config dataclass in
    config.py's registry. Refuses a name already taken, and a class that names itself otherwise."""
    name = cls.Config.name
    if not name or cls.__dict__.get("name", name) != name:
        raise ConfigError(f"method {cls.__qualname__}: give its name once, as its Config's name default")
    if name in METHODS:
        raise ConfigError(f"method {name!r} is registered already ({METHODS[name].__qualname__})")
    cls.name = name
    METHODS[name] = cls
    METHOD_CONFIGS[cls.name] = cls.Config
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def eps_train(cfg: Config) -> float:
    """The run's training eps (``Method.train_eps``), 0 for a method without an adversary."""
    return method_class(cfg.method.name).train_eps(cfg) or 0.0


def norm_train(cfg: Config) -> str:
    """The threat model the run was trained in (``method.norm``; "linf" for a method without one):
    the norm its training eps, its held-out eps and, by default, its evaluations are in."""
    return getattr(cfg.method, "norm", "linf")


# ------------------------------------------------------------------ helpers shared by methods
def build_classifier(cfg: Config, geometry: Geometry) -> nn.Module:
    return models.build(cfg.model.name, geometry.num_classes, geometry.channels, image_size=geometry.image_size,
                        dropout=cfg.model.dropout)


def make_optimizer(params, ocfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (betas) or SGD (momentum, weight decay, nesterov). ``initial_lr`` is recorded
    in each param group so the loop can set lr = initial_lr * schedule factor."""
    params = list(params)
    if ocfg.name == "adam":
        opt = torch.optim.Adam(params, lr=ocfg.lr, betas=tuple(ocfg.betas), weight_decay=ocfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay,
                              nesterov=ocfg.nesterov)
    for group in opt.param_groups:
        group["initial_lr"] = ocfg.lr
    return opt


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``: clear gradients, back-propagate, average gradients
    across ranks when training data-parallel (distributed.py), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients([p for group in opt.param_groups for p in group["params"]])  # no-op in one process
    opt.step()


def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of a batch classified correctly, as a 0-d tensor (no host sync)."""
    if len(y) == 0:
        return torch.zeros((), device=y.device)
    return (logits.argmax(1) == y).float().mean()


@contextmanager
def frozen(module: nn.Module):
    """Parameters get no gradient and buffers (BN running statistics) are restored on exit:
    the module acts as a fixed function in its current mode (the other network's step in a
    GAN)."""
    buffers = [b.clone() for b in module.buffers()]
    try:
        with no_param_grads(module):
            yield module
    finally:
        with torch.no_grad():
            for b, saved in zip(module.buffers(), buffers):
                b.copy_(saved)
