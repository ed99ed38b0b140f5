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
    """Static facts about a dataset: image shape, classes, and where users get it."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    source: str  # where to get the files, shown in error messages
    loader: Callable[..., tuple[torch.Tensor, torch.Tensor]]


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name, *, channels, image_size, num_classes, source=""):
    """Decorator: register ``loader(root: Path | None, split: str, **kw) -> (x, y)``."""

    def wrap(fn):
        DATASETS[name] = DatasetInfo(name, channels, image_size, num_classes, source, fn)
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
    built-in ``digits`` and ``synthetic`` datasets).
    """
    meta = info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    x, y = meta.loader(Path(root).expanduser() if root is not None else None, split, **kw)
    _validate(meta, x, y, kw.get("channels", meta.channels), kw.get("image_size", meta.image_size),
              kw.get("num_classes", meta.num_classes))
    return x, y


def _validate(meta: DatasetInfo, x: torch.Tensor, y: torch.Tensor, channels: int, size: int, num_classes: int) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != (channels, size, size):
        raise DataError(f"{meta.name}: images have shape {tuple(x.shape)} {x.dtype}, "
                        f"expected (N, {channels}, {size}, {size}) uint8")
    if y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise DataError(f"{meta.name}: {y.shape[0]} labels for {x.shape[0]} images")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{meta.name}: label out of range [{int(y.min())}, {int(y.max())}], expected 0..{num_classes - 1}")
