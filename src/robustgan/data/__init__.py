"""Datasets (built-in, or a user's imagefolder / npz) as in-memory uint8 tensors, and an on-device batcher.

``load(name, root=None, split="train")`` returns ``(x, y)`` with ``x`` uint8 of shape
(N, C, H, W) and ``y`` int64 of shape (N,). Nothing is ever downloaded implicitly.
"""

from robustgan.data.batcher import Batcher, augment_batch
from robustgan.data.registry import DATASETS, DatasetInfo, Layout, describe, info, load, register_dataset
from robustgan.data import builtin as _builtin  # noqa: F401  (registers digits, synthetic)
from robustgan.data import files as _files  # noqa: F401  (registers mnist, cifar10, svhn)
from robustgan.data import user as _user  # noqa: F401  (registers imagefolder, npz)

__all__ = ["Batcher", "augment_batch", "DATASETS", "DatasetInfo", "Layout", "describe", "info", "load",
           "register_dataset"]
