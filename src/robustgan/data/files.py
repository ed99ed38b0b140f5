"""Readers for the standard MNIST, CIFAR-10 and SVHN files. No downloads, no pickles
beyond plain containers, bytes and numpy arrays."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from robustgan.data.mat5 import read_mat5
from robustgan.data.registry import register_dataset
from robustgan.errors import DataError

MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (or any mirror of the four idx files)"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (the binary or python version)"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/ (format 2: train_32x32.mat, test_32x32.mat)"


def _need_root(root: Path | None, name: str, layout: str, url: str) -> Path:
    if root is None:
        raise DataError(f"{name}: no data root given: --data-root DIR (root=DIR in Python) holding {layout} (get them from {url})")
    return root


# ---------------------------------------------------------------------------- MNIST
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08


def _find_idx(root: Path, stem: str) -> Path:
    for folder in (root, root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"mnist: missing {stem}[.gz] in {root} or {root / 'MNIST' / 'raw'}; expected the four idx files "
        f"(get them from {MNIST_URL})"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file (LeCun's format): magic 0x0000TTDD (TT=0x08 ubyte, DD=ndim),
    then DD big-endian int32 sizes, then the data."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"mnist: {path} is not a valid gzip file ({err})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"mnist: {path} is truncated ({len(raw)} bytes, header needs {header})")
    magic = int.from_bytes(raw[:4], "big")
    if magic != (IDX_UBYTE << 8 | ndim):
        raise DataError(f"mnist: {path} has magic 0x{magic:08x}, expected 0x{IDX_UBYTE << 8 | ndim:08x} (idx{ndim}-ubyte)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"mnist: {path} has {len(raw)} bytes, header {dims} says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@register_dataset("mnist", channels=1, image_size=28, num_classes=10, source=MNIST_URL)
def load_mnist(root, split: str, **_):
    root = _need_root(root, "mnist", "the four idx files", MNIST_URL)
    image_file, label_file = (_find_idx(root, stem) for stem in MNIST_FILES[split])
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"mnist: {image_file} has {images.shape[0]} images but {label_file} {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"mnist: {image_file} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    x = torch.from_numpy(images.copy())[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------- CIFAR-10
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_RECORD = 1 + 3 * 32 * 32


PLAIN_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"}


def _text(value):
    """A Python-2 pickle's str arrives as bytes under encoding="bytes" (the official CIFAR-10
    batches): ASCII text either way."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _latin1(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles from Python 3 use it for bytes, and nothing
    else (no other codec: ``hex`` nested in itself grows a few bytes exponentially)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("an encode call other than bytes' latin-1 spelling")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """``bytes()`` as protocol-2 pickles spell b"": with an argument it could allocate anything."""
    if args:
        raise pickle.UnpicklingError("a bytes call with an argument")
    return b""


class _PickledDtype:
    """Stands in for ``numpy.dtype`` while unpickling: records the type code and byte order."""

    def __init__(self, code, *_):
        self.code, self.order = _text(code), "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and _text(state[1]) in ("<", ">", "|", "="):
            self.order = _text(state[1])


class _PickledArray:
    """Stands in for numpy's array reconstruction while unpickling: records the pickled state
    (version, shape, dtype, fortran order, raw bytes). numpy's own ``__setstate__`` trusts
    the file (a damaged one can crash the interpreter), so ``array`` checks every field and
    builds the array from the bytes itself."""

    def __init__(self, *_):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("a damaged array")
        _, shape, dtype, fortran, data = state
        if isinstance(data, str):  # protocol 2 from Python 2: latin-1 text
            data = data.encode("latin-1")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and 0 <= n < 2**31 for n in shape)
                and isinstance(dtype, _PickledDtype) and str(dtype.code) in PLAIN_DTYPES and isinstance(data, bytes)):
            raise pickle.UnpicklingError("an array of an unsupported kind")
        kind = np.dtype(str(dtype.code)).newbyteorder(dtype.order if dtype.order in "<>" else "=")
        if len(data) != math.prod(shape) * kind.itemsize:
            raise pickle.UnpicklingError(f"an array of shape {shape} with {len(data)} bytes")
        return np.frombuffer(data, dtype=kind).reshape(shape, order="F" if fortran else "C").copy()


class PlainUnpickler(pickle.Unpickler):
    """Admits only plain containers, bytes, str, numbers and numpy arrays of plain dtypes.

    Any other global (os.system, builtins.eval, ...) is refused before it is called; arrays
    are rebuilt from checked fields (``_PickledArray``), never by numpy's own unpickling."""

    STAND_INS = {
        ("numpy.core.multiarray", "_reconstruct"): _PickledArray,
        ("numpy._core.multiarray", "_reconstruct"): _PickledArray,
        ("numpy", "ndarray"): _PickledArray,
        ("numpy", "dtype"): _PickledDtype,
        ("_codecs", "encode"): _latin1,  # how protocol-2 pickles from Python 3 spell bytes
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def find_class(self, module, name):
        if (module, name) in self.STAND_INS:
            return self.STAND_INS[module, name]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _arrays(value):
    """``value`` with every recorded array built (containers walked)."""
    if isinstance(value, _PickledArray):
        return value.array()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_arrays(v) for v in value)
    if isinstance(value, _PickledDtype):
        raise pickle.UnpicklingError("a dtype outside an array")
    return value


def safe_unpickle(raw: bytes):
    return _arrays(PlainUnpickler(io.BytesIO(raw), encoding="bytes").load())


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"cifar10: {path} has {raw.size} bytes, not a multiple of the {CIFAR_RECORD}-byte record")
    records = raw.reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = safe_unpickle(path.read_bytes())
    except Exception as err:  # any parse failure of an untrusted file is a data error
        raise DataError(f"cifar10: cannot read {path}: {err}") from None
    if not isinstance(batch, dict):
        raise DataError(f"cifar10: {path} does not hold a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"cifar10: {path} 'data' must be a uint8 array of shape (N, 3072)")
    if labels is None or len(labels) != data.shape[0]:
        raise DataError(f"cifar10: {path} has {data.shape[0]} images but labels of another length")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"cifar10: {path} labels are not integers") from None
    return data.reshape(-1, 3, 32, 32), labels


@register_dataset("cifar10", channels=3, image_size=32, num_classes=10, source=CIFAR_URL)
def load_cifar10(root, split: str, **_):
    root = _need_root(root, "cifar10", "cifar-10-batches-bin/ or cifar-10-batches-py/", CIFAR_URL)
    bin_dir, py_dir = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    if bin_dir.is_dir():
        paths, reader = [bin_dir / f"{b}.bin" for b in CIFAR_BATCHES[split]], _read_cifar_bin
    elif py_dir.is_dir():
        paths, reader = [py_dir / b for b in CIFAR_BATCHES[split]], _read_cifar_py
    else:
        raise DataError(f"cifar10: neither {bin_dir} nor {py_dir} exists (get them from {CIFAR_URL})")
    for path in paths:
        if not path.is_file():
            raise DataError(f"cifar10: missing {path} (expected {', '.join(p.name for p in paths)}; {CIFAR_URL})")
    parts = [reader(p) for p in paths]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]).copy())
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return x, y


# ---------------------------------------------------------------------------- SVHN
@register_dataset("svhn", channels=3, image_size=32, num_classes=10, source=SVHN_URL)
def load_svhn(root, split: str, **_):
    """SVHN format 2: X is (32, 32, 3, N) uint8, y is (N, 1) with label 10 meaning digit 0."""
    root = _need_root(root, "svhn", "train_32x32.mat and test_32x32.mat", SVHN_URL)
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise DataError(f"svhn: missing {path} (expected train_32x32.mat, test_32x32.mat; get them from {SVHN_URL})")
    try:
        mat = read_mat5(path, ("X", "y"))
    except DataError as err:
        raise DataError(f"svhn: cannot read {err}") from None
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None:
        raise DataError(f"svhn: {path} lacks the variables X and y")
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(f"svhn: {path} X has shape {images.shape} {images.dtype}, expected (32, 32, 3, N) uint8")
    if np.any(labels != np.floor(labels)):
        raise DataError(f"svhn: {path} has labels that are not whole numbers")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[3]:
        raise DataError(f"svhn: {path} has {images.shape[3]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"svhn: {path} has labels outside 1..10")
    labels[labels == 10] = 0
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))
    return x, torch.from_numpy(labels)
