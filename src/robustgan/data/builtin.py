"""Datasets that need no files: scikit-learn's bundled digits, and procedural images."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustgan.data.registry import register_dataset
from robustgan.errors import DataError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_file() -> Path:
    """scikit-learn's ``digits.csv.gz``, found without importing scikit-learn (an import every CLI
    process would pay): 1797 rows of 64 pixel values (0..16) and the label."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file {path} is missing: reinstall scikit-learn")
    return path


@register_dataset("digits", channels=1, image_size=28, num_classes=10, source="bundled with scikit-learn")
def load_digits(root, split: str, **_):
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16; the same arrays as
    ``sklearn.datasets.load_digits``), bilinearly upsampled to 28x28 so the MNIST
    architectures apply. The train/test split is a fixed permutation (seed 0): 1438 train, 359 test."""
    x, y = _digits_28()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    idx = order[n_test:] if split == "train" else order[:n_test]
    return x[idx], y[idx]  # copies: the cached arrays stay as read


@functools.lru_cache(maxsize=1)
def _digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits at 28x28 (uint8) and their labels, parsed once per process (the demo
    loads the dataset ~40 times: 28 ms each)."""
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)  # in [0, 1]
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), torch.from_numpy(table[:, -1].astype(np.int64))


@register_dataset("synthetic", channels=1, image_size=28, num_classes=10, source="procedural")
def load_synthetic(root, split: str, n: int | None = None, image_size: int = 28, channels: int = 1,
                   num_classes: int = 10, seed: int = 0, **_):
    """Procedural, learnable images for tests: class c is a bright square at one of
    ``num_classes`` fixed positions on a noisy background. Deterministic per (seed, split)."""
    n = n if n is not None else (512 if split == "train" else 128)
    gen = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    y = torch.randint(0, num_classes, (n,), generator=gen)
    x = torch.rand(n, channels, image_size, image_size, generator=gen) * 0.3
    side = max(2, image_size // 4)
    grid = int(np.ceil(np.sqrt(num_classes)))
    step = (image_size - side) / max(1, grid - 1)
    for c in range(num_classes):  # per class, not per sample: num_classes iterations
        r, q = divmod(c, grid)
        top, left = int(round(r * step)), int(round(q * step))
        mask = y == c
        x[mask, :, top:top + side, left:left + side] += 0.6
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y
