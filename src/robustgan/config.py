"""Typed configuration: dataclasses loaded from TOML (tomllib), dotted ``--set`` overrides,
validation with one-line errors, and a small TOML writer for the resolved config.

A config has fixed sections ``data``, ``model``, ``optim``, ``schedule``, ``train`` and a
``method`` section whose fields depend on ``method.name``: each method registers its own
dataclass in ``METHOD_CONFIGS`` (``robustgan.methods.register_method`` does it; importing
``robustgan`` imports every method). This layer sits above ``data`` and ``models`` because
it validates dataset and model names against their registries."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robustgan.data import DATASETS
from robustgan.eps import parse_number
from robustgan.errors import ConfigError
from robustgan.models import MODELS

METHOD_CONFIGS: dict[str, type] = {}  # method name -> its config dataclass (filled by robustgan.methods)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # directory with the dataset's standard files
    flip: bool = False  # random horizontal flips
    shift: int = 0  # random shifts of up to this many pixels (zero padding + crop)
    train_limit: int = 0  # use only the first N training images (0 = all)
    # imagefolder / npz only: grey (1) or RGB (3), and one image size (a given size resizes
    # every image); 0 = as stored. Training records the resolved values and the class names.
    channels: int = 0
    image_size: int = 0
    classes: tuple[str, ...] = ()

    def validate(self):
        if self.name not in DATASETS:
            raise ConfigError(f"data.name: unknown dataset {self.name!r}; choose one of {', '.join(sorted(DATASETS))}")
        _check(self.shift >= 0, "data.shift must be >= 0")
        _check(self.train_limit >= 0, "data.train_limit must be >= 0")
        _check(self.channels in (0, 1, 3), "data.channels must be 1 (grey), 3 (RGB) or 0 (as stored)")
        _check(self.image_size >= 0, "data.image_size must be >= 0")
        user = DATASETS[self.name].user
        _check(user or not (self.channels or self.image_size or self.classes),
               f"data.channels, data.image_size and data.classes are for imagefolder and npz; {self.name} has "
               "its own")


@dataclass
class ModelConfig:
    name: str = "cw_cnn"  # the classifier (for ATGAN: D's backbone)
    dropout: float = 0.5  # cw_cnn's dropout after its first dense layer (C&W 2017: 0.5); others have none

    def validate(self):
        check_frac(self.dropout, "model.dropout")
        if self.name not in MODELS or MODELS[self.name].kind != "classifier":
            names = sorted(n for n, e in MODELS.items() if e.kind == "classifier")
            raise ConfigError(f"model.name: {self.name!r} is not a classifier; choose one of {', '.join(names)}")


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False

    def validate(self, prefix="optim"):
        _check(self.name in ("adam", "sgd"), f"{prefix}.name must be 'adam' or 'sgd', got {self.name!r}")
        _check(self.lr > 0, f"{prefix}.lr must be positive, got {self.lr}")
        _check(all(0 <= b < 1 for b in self.betas), f"{prefix}.betas must lie in [0, 1)")
        _check(self.momentum >= 0 and self.weight_decay >= 0, f"{prefix}.momentum and weight_decay must be >= 0")


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | multistep | cosine | cyclic
    milestones: tuple[int, ...] = ()  # epochs at which multistep multiplies the lr by gamma
    gamma: float = 0.1
    peak: float = 0.4  # cyclic: the fraction of training at which the lr peaks (Wong et al. 2020: 2/5)

    def validate(self):
        _check(self.name in ("constant", "multistep", "cosine", "cyclic"),
               "schedule.name must be constant, multistep, cosine or cyclic")
        _check(0 < self.gamma <= 1, "schedule.gamma must be in (0, 1]")
        _check(0 < self.peak < 1, "schedule.peak must be in (0, 1)")

    @property
    def per_step(self) -> bool:
        """The lr changes every step (cyclic), not only at epoch starts."""
        return self.name == "cyclic"

    def factor(self, epoch: float, epochs: int) -> float:
        """Learning-rate multiplier at ``epoch`` (0-based; fractional inside an epoch for a
        per-step schedule) of ``epochs``. Cyclic (Wong, Rice and Kolter 2020, "Fast is better
        than free"): linear from 0 to the full lr at ``peak`` of training, back to 0 at the end."""
        if self.name == "multistep":
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
        if self.name == "cyclic":
            t, top = epoch / max(1, epochs), self.peak
            return t / top if t <= top else max(0.0, (1 - t) / (1 - top))
        return 1.0


@dataclass
class TrainConfig:
    epochs: int = 10
    steps: int = 0  # total optimisation steps; > 0 overrides epochs (paper 000 CIFAR-10: 80k)
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | off
    channels_last: bool = False  # networks and batches in channels_last memory format (faster convolutions)
    compile: bool = False  # torch.compile every network (in place; first steps pay the compile time)
    tensorboard: bool = False  # also log scalars to <run>/tb (needs the tensorboard package)
    eval_every: int = 1  # epochs between held-out evaluations (the last epoch is always evaluated)
    eval_limit: int = 1000  # test images used by those evaluations (0 = all)
    eval_eps: float = 0.0  # PGD eps for held-out evaluation (0 = clean only)
    eval_steps: int = 10
    log_every: int = 20  # steps between progress-bar refreshes and finiteness checks (the only host syncs)
    checkpoint_every: int = 0  # also checkpoint every this many steps inside an epoch (0 = at epoch ends only)
    # Catastrophic-overfitting guard (monitor.OverfitGuard): PGD-10 and FGSM-RS on the first
    # guard_images training images after every epoch; PGD accuracy falling by more than guard_drop in
    # an epoch (Wong et al. 2020's early stop), or FGSM-RS accuracy above PGD's by more than guard_gap,
    # stops training and keeps the previous epoch's weights. auto = on for single-step methods.
    guard: str = "auto"  # auto | on | off
    guard_drop: float = 0.2
    guard_gap: float = 0.5
    guard_images: int = 256  # about 24 passes (forward and backward) each per epoch, counted in the run's cost

    def validate(self):
        _check(self.epochs > 0, f"train.epochs must be positive, got {self.epochs}")
        _check(self.steps >= 0, f"train.steps must be >= 0, got {self.steps}")
        _check(self.batch_size > 0, f"train.batch_size must be positive, got {self.batch_size}")
        _check(self.amp in ("auto", "bf16", "off"), f"train.amp must be auto, bf16 or off, got {self.amp!r}")
        _check(self.eval_every > 0 and self.log_every > 0, "train.eval_every and train.log_every must be positive")
        _check(self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.eval_steps > 0, f"train.eval_steps must be positive, got {self.eval_steps}")
        _check(self.guard in ("auto", "on", "off"), f"train.guard must be auto, on or off, got {self.guard!r}")
        _check(0 < self.guard_drop <= 1 and 0 < self.guard_gap <= 1,
               f"train.guard_drop and train.guard_gap must be in (0, 1], got {self.guard_drop}, {self.guard_gap}")
        _check(self.guard_images > 0, f"train.guard_images must be positive, got {self.guard_images}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = None  # the method's own dataclass, chosen by method.name

    def validate(self) -> "Config":
        for section in (self.data, self.model, self.optim, self.schedule, self.train, self.method):
            section.validate()
        check_eps_value(self.train.eval_eps, "train.eval_eps", norm=getattr(self.method, "norm", "linf"))
        return self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


NORMS = ("linf", "l2")  # the threat models (attacks.threat.NORMS), by name


def check_eps_value(eps: float, key: str, allow_inf: bool = False, norm: str = "linf") -> None:
    """eps of ``key`` in pixel scale for ``norm``: [0, 1] in L-inf, >= 0 in L2 (inf where allowed)."""
    if math.isinf(eps) and eps > 0:
        _check(allow_inf, f"{key} must be finite, got {eps}")
    elif norm == "l2":
        _check(eps >= 0, f"{key} must be >= 0 (an L2 radius in pixel scale), got {eps}")
    elif math.isnan(eps) or eps < 0 or eps > 1:
        raise ConfigError(f"{key} must be in [0, 1] (pixel scale), got {eps}")


def check_norm(norm: str, key: str, method: str, defined: tuple[str, ...] = NORMS) -> None:
    """One line where ``norm`` is unknown or ``method`` has no version in it."""
    _check(norm in NORMS, f"{key} must be one of {', '.join(NORMS)}, got {norm!r}")
    _check(norm in defined, f"{key} = {norm!r}: {method} is defined in {' and '.join(defined)} only")


def check_frac(frac: float, key: str) -> None:
    _check(0 <= frac <= 1, f"{key} must be in [0, 1], got {frac}")


# ------------------------------------------------------------------ building from dicts
def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML / --set value to the field's type, or raise ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError("expected true or false")
        if annotation is int:
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
                raise ValueError("expected an integer")
            return int(value)
        if annotation is float:
            return parse_number(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            inner = args[0]
            if len(args) == 2 and args[1] is not Ellipsis and len(value) != len(args):
                raise ValueError(f"expected {len(args)} values")
            return tuple(_coerce(v, inner, key) for v in value)
        if origin in (typing.Union, types.UnionType):
            if value is None or (isinstance(value, str) and value.lower() == "none"):
                return None
            return _coerce(value, next(a for a in args if a is not type(None)), key)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ConfigError(f"{key}: invalid value {value!r} ({err})") from None
    return value


def build_section(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key {prefix}.{key}; valid keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    return cls(**kwargs)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
            "train": TrainConfig}


def method_config_class(name: str) -> type:
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {', '.join(sorted(METHOD_CONFIGS))}")
    return METHOD_CONFIGS[name]


def from_dict(raw: dict) -> Config:
    for key in raw:
        if key not in SECTIONS and key != "method":
            raise ConfigError(f"unknown config section [{key}]; valid: {', '.join([*SECTIONS, 'method'])}")
    parts = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        parts[name] = build_section(cls, section, name)
    method_raw = dict(raw.get("method", {}))
    method_name = method_raw.get("name", "standard")
    parts["method"] = build_section(method_config_class(method_name), method_raw, "method")
    return Config(**parts).validate()


def set_dotted(raw: dict, assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as TOML, else kept as a string)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = (s.strip() for s in assignment.split("=", 1))
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set key must look like section.key, got {key!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[path[-1]] = value


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (presets live in configs/)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    raw = read_toml(path) if path is not None else {}
    for assignment in overrides:
        set_dotted(raw, assignment)
    return from_dict(raw)


# ------------------------------------------------------------------ writing
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not (isinstance(value, float) and math.isinf(value)) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_dict(cfg: Config) -> dict:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in [*SECTIONS, "method"]}


def to_toml(cfg: Config) -> str:
    lines = []
    for name, section in to_dict(cfg).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in section.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
