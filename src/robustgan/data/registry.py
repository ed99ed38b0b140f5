"""Dataset registry: one loader function per dataset name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from robustgan.errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset: image shape, classes, and where users get it. A user dataset
    (imagefolder, npz) has no fixed shape: ``describe`` reads it from the files."""

    name: str
    channels: int  # 0 for a user dataset
    image_size: int
    num_classes: int
    source: str  # where to get the files, shown in error messages
    loader: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    describe: Callable[..., "Layout"] | None = None

    @property
    def user(self) -> bool:
        return self.describe is not None


@dataclass(frozen=True)
class Layout:
    """A user dataset's geometry and class names, as resolved from its files (and data.*)."""

    channels: int
    image_size: int
    classes: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name, *, channels=0, image_size=0, num_classes=0, source="", describe=None):
    """Decorator: register ``loader(root: Path | None, split: str, **kw) -> (x, y)``. A user
    dataset also gives ``describe(root, channels, image_size) -> Layout`` and its loader
    takes ``channels``, ``image_size`` and ``classes`` (the resolved layout). Refuses a name
    already taken."""

    def wrap(fn):
        if name in DATASETS:
            raise DataError(f"dataset {name!r} is registered already")
        DATASETS[name] = DatasetInfo(name, channels, image_size, num_classes, source, fn, describe)
        return fn

    return wrap


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load(name: str, root=None, split: str = "train", **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split into memory.

    Returns ``x`` uint8 (N, C, H, W) and ``y`` int64 (N,) with labels in [0, num_classes).
    ``root`` is the directory holding the dataset's standard files (ignored by the
    built-in ``digits`` and ``synthetic`` datasets; for ``npz`` the .npz file). A user
    dataset takes ``channels`` and ``image_size`` (0: as stored; a given size resizes every
    image) and ``classes`` (default: the train split's).
    """
    meta = info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    root = Path(root).expanduser() if root is not None else None
    if meta.user:  # the layout from the files, unless all given (data.channels / image_size / classes)
        given = Layout(kw.get("channels", 0), kw.get("image_size", 0), tuple(kw.get("classes") or ()))
        layout = given if all(given.__dict__.values()) else meta.describe(root, given.channels, given.image_size)
        kw = kw | {"channels": layout.channels, "image_size": layout.image_size, "resize": bool(kw.get("image_size")),
                   "classes": tuple(kw.get("classes") or layout.classes)}
    x, y = meta.loader(root, split, **kw)
    num_classes = len(kw["classes"]) if meta.user else kw.get("num_classes", meta.num_classes)
    _validate(meta, x, y, kw.get("channels", meta.channels), kw.get("image_size", meta.image_size), num_classes)
    return x, y


def describe(name: str, root=None, channels: int = 0, image_size: int = 0) -> Layout:
    """The geometry and class names of a dataset (read from the files for a user dataset;
    ``channels`` / ``image_size`` of 0 mean as stored)."""
    meta = info(name)
    if meta.user:
        return meta.describe(Path(root).expanduser() if root is not None else None, channels, image_size)
    return Layout(meta.channels, meta.image_size, tuple(str(c) for c in range(meta.num_classes)))


def _validate(meta: DatasetInfo, x: torch.Tensor, y: torch.Tensor, channels: int, size: int, num_classes: int) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != (channels, size, size):
        raise DataError(f"{meta.name}: images have shape {tuple(x.shape)} {x.dtype}, "
                        f"expected (N, {channels}, {size}, {size}) uint8")
    if y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise DataError(f"{meta.name}: {y.shape[0]} labels for {x.shape[0]} images")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{meta.name}: label out of range [{int(y.min())}, {int(y.max())}], expected 0..{num_classes - 1}")
