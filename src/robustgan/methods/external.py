"""A classifier trained elsewhere: ``--model MODULE:FACTORY --weights FILE.safetensors``.

``FACTORY()`` returns an ``nn.Module`` mapping float (N, C, H, W) images in [0, 1] to logits
(normalisation is the model's job, as in robustgan's own models). Its weights load only from
safetensors. Such a model is evaluated, never trained here: ``runtime.external_run`` writes
a small run directory for it (config, evaluation cache, checks, model card) so every
evaluation command treats it like a run of ours."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from robustgan.errors import ConfigError, RobustganError
from robustgan.methods.base import Method, MethodConfig, register_method

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")
CONVERT = ("convert it once where you trust the file: `from safetensors.torch import save_file; "
           "save_file(torch.load(FILE, weights_only=True), 'model.safetensors')`")


@dataclass
class ExternalConfig(MethodConfig):
    name: str = "external"
    factory: str = ""  # MODULE:FACTORY or path/to/file.py:FACTORY
    weights: str = ""  # a .safetensors file

    def validate(self):
        if ":" not in self.factory:
            raise ConfigError(f"--model must be MODULE:FACTORY or FILE.py:FACTORY, got {self.factory!r}")
        check_weights_file(Path(self.weights))


def check_weights_file(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise ConfigError(f"{path}: pickled weights are never loaded; {CONVERT}")
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: --weights must be a .safetensors file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file")


def absolute_factory(spec: str) -> str:
    """FILE.py:FACTORY with FILE made absolute (a run keeps working from any directory);
    MODULE:FACTORY as given."""
    where, _, attr = spec.rpartition(":")
    return f"{Path(where).expanduser().resolve()}:{attr}" if where.endswith(".py") else spec


def factory_source(spec: str) -> Path | None:
    """The file that defines the factory (FILE.py, or MODULE's file when it has one)."""
    where = spec.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where) if Path(where).is_file() else None
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and Path(found.origin).is_file() else None


def import_factory(spec: str):
    """The callable named by MODULE:FACTORY (MODULE importable from the working directory)
    or FILE.py:FACTORY."""
    where, _, attr = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            name = "robustgan_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or not path.is_file():
                raise RobustganError(f"--model: no such file {where}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # before running it, as importlib's recipe says (dataclasses need it)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # the working directory, as `python -m` would
            module = importlib.import_module(where)
    except ImportError as err:
        raise RobustganError(f"--model: cannot import {where} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RobustganError(f"--model: {where} has no callable {attr!r}")
    return factory


@register_method
class External(Method):
    Config = ExternalConfig
    trained_here = False

    @classmethod
    def provenance(cls, cfg):
        return {"model": cfg.method.factory, "weights": cfg.method.weights}

    @classmethod
    def identity(cls, cfg):
        """Its factory and the SHA-256 of the factory's source file: two factories over the same
        weights, or an edited factory, never share a result."""
        source = factory_source(cfg.method.factory)
        if source is None:
            return f"+{cfg.method.factory}"
        return f"+{cfg.method.factory}@{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}"

    @classmethod
    def architecture(cls, cfg):
        return cfg.method.factory

    def __init__(self, cfg, geometry, device):
        raise RobustganError("an external model (--model) is evaluated here, not trained")

    @classmethod
    def build_defended(cls, cfg, geometry) -> nn.Module:
        model = import_factory(cfg.method.factory)()
        if not isinstance(model, nn.Module):
            raise RobustganError(f"--model: {cfg.method.factory}() returned {type(model).__name__}, not an nn.Module")
        return model

    @classmethod
    def weights_file(cls, cfg, run) -> Path:
        return Path(cfg.method.weights)
