"""Datasets users bring: a folder of images per class, or one .npz of arrays.

- ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (any format Pillow
  reads), class names sorted as torchvision's ImageFolder sorts them; grey or RGB by
  ``data.channels`` (0: as the first image is); one size, or resized to ``data.image_size``.
- ``npz``: ``root`` is one .npz file with ``x_train, y_train, x_test, y_test`` (uint8 images,
  NHWC or NCHW or NHW; integer labels), read with ``allow_pickle=False``.

Every problem a user can cause is one DataError naming the file, raised before anything is
returned (nothing is half-loaded)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from robustgan.data.registry import Layout, register_dataset
from robustgan.errors import DataError

FOLDER_LAYOUT = "DIR/train/<class>/*.png|jpg and DIR/test/<class>/*"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


# ------------------------------------------------------------------- imagefolder
def _class_dirs(root: Path | None, split: str) -> list[Path]:
    if root is None:
        raise DataError(f"imagefolder: no data root given: --data-root DIR (root=DIR in Python) holding {FOLDER_LAYOUT}")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} is not a directory; expected {FOLDER_LAYOUT}")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(f"imagefolder: {folder} has no class folders; expected {FOLDER_LAYOUT}")
    return dirs


def _files(class_dir: Path) -> list[Path]:
    files = sorted(f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise DataError(f"imagefolder: {class_dir} is an empty class folder")
    return files


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"imagefolder: {path} is not a readable image ({err.__class__.__name__})") from None


def describe_folder(root: Path | None, channels: int = 0, image_size: int = 0) -> Layout:
    """Classes from root/train's folders; channels and size from the first image unless given."""
    dirs = _class_dirs(root, "train")
    first = _files(dirs[0])[0]
    image = _open(first)
    if not image_size:
        if image.width != image.height:
            raise DataError(f"imagefolder: {first} is {image.width}x{image.height}, not square; "
                            "set data.image_size to resize every image")
        image_size = image.width
    channels = channels or (1 if image.mode in GREY_MODES else 3)
    return Layout(channels, image_size, tuple(d.name for d in dirs))


@register_dataset("imagefolder", source=FOLDER_LAYOUT, describe=describe_folder)
def load_folder(root: Path | None, split: str, *, channels: int, image_size: int, classes: tuple[str, ...],
                resize: bool = False, **_):
    """One split as uint8 (N, C, S, S) and labels in class-name order. Images of another size
    than ``image_size`` are resized (bilinear) only when data.image_size was set (``resize``);
    otherwise a size that differs from the first image's is an error naming both files."""
    dirs = _class_dirs(root, split)
    names = [d.name for d in dirs]
    if sorted(names) != sorted(classes):
        problems = ([f"no folder {root / split / c}" for c in classes if c not in names]
                    + [f"{root / split / n} is not a class of train/" for n in names if n not in classes])
        raise DataError(f"imagefolder: the classes of {root / split} differ from train/'s: {'; '.join(problems)}")
    mode, arrays, labels, first = ("L" if channels == 1 else "RGB"), [], [], None
    for class_dir in dirs:
        label = list(classes).index(class_dir.name)  # the run's class order (sorted names unless data.classes says)
        for path in _files(class_dir):
            image = _open(path).convert(mode)
            if image.size != (image_size, image_size):
                if not resize:
                    raise DataError(f"imagefolder: {path} is {image.width}x{image.height} but {first or 'the first image'} "
                                    f"is {image_size}x{image_size}; set data.image_size to resize every image")
                image = image.resize((image_size, image_size), Image.BILINEAR)
            first = first or path
            arrays.append(np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels))
            labels.append(label)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


# ----------------------------------------------------------------------------- npz
def _read_npz(root: Path | None) -> dict[str, np.ndarray]:
    if root is None:
        raise DataError("npz: no data root given: --data-root FILE.npz (root= in Python) holding " + ", ".join(NPZ_KEYS))
    if not root.is_file():
        raise DataError(f"npz: {root} is not a file: --data-root FILE.npz (root= in Python) holding {', '.join(NPZ_KEYS)}")
    try:
        archive = np.load(root, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"npz: {root} is a single array, not an .npz archive of {', '.join(NPZ_KEYS)}")
        with archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise DataError(f"npz: {root} has no {', '.join(missing)} (it holds {', '.join(archive.files) or 'nothing'})")
            return {k: archive[k] for k in NPZ_KEYS}
    except ValueError as err:
        if "allow_pickle" in str(err):  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise DataError(f"npz: {root} holds Python objects, which are never unpickled; save plain uint8 "
                            "image and integer label arrays") from None
        raise DataError(f"npz: {root} is not a readable .npz file ({err})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"npz: {root} is not a readable .npz file ({err.__class__.__name__})") from None


def _nchw(x: np.ndarray, key: str, root: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"npz: {root}: {key} is {x.dtype}, expected uint8 images (0..255)")
    if x.ndim == 3:  # (N, H, W) grey
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise DataError(f"npz: {root}: {key} has shape {x.shape}; expected (N, H, W, C), (N, C, H, W) or (N, H, W) "
                    "with C = 1 or 3")


def _labels(y: np.ndarray, key: str, root: Path, n: int) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise DataError(f"npz: {root}: {key} is {y.dtype} {y.shape}, expected {n} integer labels")
    if n and y.min() < 0:
        raise DataError(f"npz: {root}: {key} has a negative label ({y.min()})")
    return y.astype(np.int64)


def describe_npz(root: Path | None, channels: int = 0, image_size: int = 0) -> Layout:
    arrays = _read_npz(root)
    x = _nchw(arrays["x_train"], "x_train", root)
    if x.shape[2] != x.shape[3] and not image_size:
        raise DataError(f"npz: {root}: x_train images are {x.shape[3]}x{x.shape[2]}, not square; set data.image_size")
    y = _labels(arrays["y_train"], "y_train", root, len(x))
    if not len(y):
        raise DataError(f"npz: {root}: x_train holds no images")
    return Layout(channels or x.shape[1], image_size or x.shape[2], tuple(str(c) for c in range(int(y.max()) + 1)))


@register_dataset("npz", source="one .npz file with " + ", ".join(NPZ_KEYS), describe=describe_npz)
def load_npz(root: Path | None, split: str, *, channels: int, image_size: int, classes: tuple[str, ...], **_):
    arrays = _read_npz(root)
    x = _nchw(arrays[f"x_{split}"], f"x_{split}", root)
    y = _labels(arrays[f"y_{split}"], f"y_{split}", root, len(x))
    if len(y) and y.max() >= len(classes):
        raise DataError(f"npz: {root}: y_{split} has label {y.max()}, out of range for the {len(classes)} classes "
                        f"of y_train (0..{len(classes) - 1})")
    images = torch.from_numpy(np.ascontiguousarray(x))
    if images.shape[1] != channels:  # grey <-> RGB as data.channels asks, with Pillow's "L" weights (ITU-R 601-2)
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True) if channels == 1 else images.expand(-1, 3, -1, -1).float()
        images = images.round().clamp(0, 255).to(torch.uint8)
    if images.shape[2:] != (image_size, image_size):  # data.image_size asked for another size (one array: one size)
        images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=True)
        images = images.clamp(0, 255).round().to(torch.uint8)
    return images.contiguous(), torch.from_numpy(y)
