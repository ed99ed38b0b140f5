import gzip
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import robustgan
from robustgan.data import Batcher, augment_batch
from robustgan.errors import DataError

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ writers of the real formats
def write_idx(path, array, gz=False):
    magic = (0x08 << 8 | array.ndim).to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = magic + dims + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(root, n=7, gz=False, subdir=False):
    folder = root / "MNIST" / "raw" if subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (img, lab) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, (n,), dtype=np.uint8)
        write_idx(folder / (img + (".gz" if gz else "")), x, gz)
        write_idx(folder / (lab + (".gz" if gz else "")), y, gz)
        arrays[split] = (x, y)
    return arrays


def make_cifar(root, kind, n=5):
    folder = root / ("cifar-10-batches-bin" if kind == "bin" else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = RNG.integers(0, 10, (n,), dtype=np.uint8)
        if kind == "bin":
            rec = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            batch = {b"batch_label": b"x", b"labels": [int(v) for v in y], b"data": x.reshape(n, -1),
                     b"filenames": [b"a.png"] * n}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[name] = (x, y)
    return arrays


def make_svhn(root, n=6, compress=False):
    arrays = {}
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y}, do_compression=compress)
        arrays[split] = (x, y)
    return arrays


def mat5_big_endian(variables) -> bytes:
    """An uncompressed level-5 MAT-file in big-endian byte order (scipy writes only the
    machine's): (name, array, MATLAB class, stored data type) each, every element padded to 8."""
    def element(kind, data):
        return struct.pack(">II", kind, len(data)) + data + bytes(-len(data) % 8)

    out = b"MATLAB 5.0 MAT-file, big-endian".ljust(116) + bytes(8) + struct.pack(">H", 0x0100) + b"MI"
    for name, array, cls, stored in variables:
        data = np.asarray(array, dtype=">" + {2: "u1", 9: "f8"}[stored]).tobytes(order="F")
        body = (element(6, struct.pack(">II", cls, 0)) + element(5, struct.pack(f">{array.ndim}i", *array.shape))
                + element(1, name.encode()) + element(stored, data))
        out += element(14, body)
    return out


# ------------------------------------------------------------------ MNIST
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("subdir", [False, True])
def test_mnist_round_trip(tmp_path, gz, subdir):
    arrays = make_mnist(tmp_path, gz=gz, subdir=subdir)
    for split in ("train", "test"):
        x, y = robustgan.data.load("mnist", tmp_path, split)
        assert x.dtype == torch.uint8 and x.shape == (7, 1, 28, 28)
        assert y.dtype == torch.int64 and y.shape == (7,)
        assert np.array_equal(x[:, 0].numpy(), arrays[split][0])
        assert np.array_equal(y.numpy(), arrays[split][1])


def test_mnist_missing_file_names_it(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*MNIST/raw"):
        robustgan.data.load("mnist", tmp_path, "test")


def test_mnist_truncated_and_bad_magic(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(DataError, match="bytes"):
        robustgan.data.load("mnist", tmp_path, "train")
    path.write_bytes(b"\x00\x00\x09\x03" + raw[4:])
    with pytest.raises(DataError, match="magic"):
        robustgan.data.load("mnist", tmp_path, "train")
    path.write_bytes(raw[:6])
    with pytest.raises(DataError, match="truncated"):
        robustgan.data.load("mnist", tmp_path, "train")


def test_mnist_corrupt_gzip(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="gzip"):
        robustgan.data.load("mnist", tmp_path, "train")


def test_mnist_label_out_of_range(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(7, 12, np.uint8))
    with pytest.raises(DataError, match="label out of range"):
        robustgan.data.load("mnist", tmp_path, "test")


def test_no_root_says_where_to_get_files():
    with pytest.raises(DataError, match="--data-root.*lecun"):
        robustgan.data.load("mnist", None, "train")


# ------------------------------------------------------------------ CIFAR-10
@pytest.mark.parametrize("kind", ["bin", "py"])
def test_cifar_round_trip(tmp_path, kind):
    arrays = make_cifar(tmp_path, kind)
    x, y = robustgan.data.load("cifar10", tmp_path, "train")
    assert x.shape == (25, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    expected = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(x.numpy(), expected)
    xt, yt = robustgan.data.load("cifar10", tmp_path, "test")
    assert np.array_equal(xt.numpy(), arrays["test_batch"][0])
    assert np.array_equal(yt.numpy(), arrays["test_batch"][1])


def test_cifar_bin_truncated(tmp_path):
    make_cifar(tmp_path, "bin")
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="record"):
        robustgan.data.load("cifar10", tmp_path, "test")


def test_cifar_pickle_truncated(tmp_path):
    make_cifar(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read"):
        robustgan.data.load("cifar10", tmp_path, "test")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    make_cifar(tmp_path, "py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        robustgan.data.load("cifar10", tmp_path, "test")
    assert not (tmp_path / "PWNED").exists()


def test_cifar_missing_layout(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-bin.*cifar-10-batches-py"):
        robustgan.data.load("cifar10", tmp_path, "train")


# ------------------------------------------------------------------ SVHN
@pytest.mark.parametrize("compress", [False, True])
def test_svhn_round_trip_label_10_is_0(tmp_path, compress):
    arrays = make_svhn(tmp_path, compress=compress)
    x, y = robustgan.data.load("svhn", tmp_path, "test")
    xs, ys = arrays["test"]
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x.numpy(), xs.transpose(3, 2, 0, 1))
    expected = ys.reshape(-1).astype(np.int64)
    expected[expected == 10] = 0
    assert np.array_equal(y.numpy(), expected) and y[0] == 0


def test_svhn_big_endian_and_labels_stored_as_bytes_of_a_double_array(tmp_path):
    """MATLAB stores a double array of small integers (SVHN's y) as uint8 data; the reader
    returns the array's class, in either byte order."""
    x = RNG.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [3]])
    (tmp_path / "test_32x32.mat").write_bytes(mat5_big_endian([("X", x, 9, 2), ("note", y, 6, 9), ("y", y, 6, 2)]))
    images, labels = robustgan.data.load("svhn", tmp_path, "test")
    assert np.array_equal(images.numpy(), x.transpose(3, 2, 0, 1)) and labels.tolist() == [0, 1, 9, 3]
    (tmp_path / "test_32x32.mat").write_bytes(mat5_big_endian([("X", x, 9, 2), ("y", y.astype(float) + 0.5, 6, 9)]))
    with pytest.raises(DataError, match="not whole numbers"):
        robustgan.data.load("svhn", tmp_path, "test")


def test_svhn_corrupt(tmp_path):
    make_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="train_32x32.mat"):
        robustgan.data.load("svhn", tmp_path, "train")
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="missing .*test_32x32.mat"):
        robustgan.data.load("svhn", tmp_path, "test")


# the examples: single bytes of the .mat file (X's array flags, the type of X's data tag) that crashed scipy.io.loadmat
@settings(max_examples=25, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 5000), flip=st.integers(0, 5000), value=st.integers(1, 255))
@example(cut=0, flip=145, value=57)
@example(cut=0, flip=184, value=55)
@example(cut=0, flip=185, value=137)
def test_loaders_never_crash_on_damaged_files(tmp_path_factory, cut, flip, value):
    """Random truncations and byte flips of every format: a correct load or DataError,
    nothing else, and no hang (hypothesis' deadline: 5 s per example)."""
    root = tmp_path_factory.mktemp("damaged")
    make_mnist(root, n=3)
    make_svhn(root, n=3)
    make_cifar(root / "bin", "bin", n=2)
    make_cifar(root / "py", "py", n=2)
    damaged = (root / "t10k-images-idx3-ubyte", root / "test_32x32.mat",
               root / "bin" / "cifar-10-batches-bin" / "test_batch.bin", root / "py" / "cifar-10-batches-py" / "test_batch")
    for path in damaged:
        raw = bytearray(path.read_bytes())
        raw[flip % len(raw)] ^= value
        path.write_bytes(bytes(raw[: max(0, len(raw) - cut)]))
    for name, where in (("mnist", root), ("svhn", root), ("cifar10", root / "bin"), ("cifar10", root / "py")):
        try:
            x, y = robustgan.data.load(name, where, "test")
        except DataError:
            continue
        assert x.dtype == torch.uint8 and len(x) == len(y)


# ------------------------------------------------------------------ built-in datasets
def test_digits_embedded_fixed_split():
    x, y = robustgan.data.load("digits", split="train")
    xt, yt = robustgan.data.load("digits", split="test")
    assert x.shape == (1438, 1, 28, 28) and xt.shape == (359, 1, 28, 28)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert int(x.max()) == 255 and int(x.min()) == 0
    x[:] = 0  # a caller's copy: the next load (parsed once per process) is unchanged
    x2, _ = robustgan.data.load("digits", split="train")
    assert int(x2.max()) == 255 and torch.equal(x2, robustgan.data.load("digits", split="train")[0])


def test_digits_file_missing_is_a_data_error(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from robustgan.data.builtin import digits_file

    spec = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]  # an install without its data files
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(DataError, match="digits file .* is missing: reinstall scikit-learn"):
        digits_file()


def test_digits_are_scikit_learns_digits():
    """The loader reads scikit-learn's file without importing it: the same images and labels."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype("float32") / 16)[:, None]
    expected = (F.interpolate(images, size=(28, 28), mode="bilinear").clamp(0, 1) * 255).round().to(torch.uint8)
    x, y = robustgan.data.load("digits", split="train")
    xt, yt = robustgan.data.load("digits", split="test")
    ours = sorted(zip(torch.cat([x, xt]).flatten(1).tolist(), torch.cat([y, yt]).tolist()))
    assert ours == sorted(zip(expected.flatten(1).tolist(), bunch.target.tolist()))


def test_synthetic_any_size():
    x, y = robustgan.data.load("synthetic", split="train", n=20, image_size=32, channels=3)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset"):
        robustgan.data.load("imagenet")
    with pytest.raises(DataError, match="unknown split"):
        robustgan.data.load("digits", split="val")


# ------------------------------------------------------------------ batcher
def test_batcher_covers_epoch_once_and_is_seeded():
    x, y = robustgan.data.load("synthetic", split="train", n=50)
    batcher = Batcher(x, y, 16, seed=3)
    seen = torch.cat([yb for _, yb in batcher])
    assert len(batcher) == 4 and len(seen) == 50
    assert sorted(seen.tolist()) == sorted(y.tolist())
    first = [xb for xb, _ in Batcher(x, y, 16, seed=3)]
    again = [xb for xb, _ in Batcher(x, y, 16, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(0 <= xb.min() and xb.max() <= 1 for xb in first)


def test_batcher_resume_state():
    x, y = robustgan.data.load("synthetic", split="train", n=40)
    a = Batcher(x, y, 8, seed=1, flip=True, shift=2)
    list(a)
    state = a.state_dict()
    b = Batcher(x, y, 8, seed=99, flip=True, shift=2)
    b.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


def test_batcher_resumes_mid_epoch():
    x, y = robustgan.data.load("synthetic", split="train", n=40)
    a = Batcher(x, y, 8, seed=1, flip=True, shift=2)
    list(a)  # one full epoch first: the state then carries a used generator
    rest = iter(a)
    next(rest), next(rest)
    state = a.state_dict()
    assert state["position"] == 2
    b = Batcher(x, y, 8, seed=99, flip=True, shift=2)
    b.load_state_dict(state)
    tail_a, tail_b = list(rest), list(b)
    assert len(tail_a) == len(tail_b) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(tail_a, tail_b))
    assert b.state_dict()["position"] == 0 and "epoch" not in b.state_dict()
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))  # the next epochs agree too


def test_augment_matches_per_sample_reference():
    x = torch.rand(5, 2, 6, 7)
    flip = torch.tensor([True, False, True, False, True])
    offsets = torch.tensor([[0, 0], [2, 2], [4, 1], [1, 3], [2, 0]])
    out = augment_batch(x, flip, offsets, pad=2)
    for i in range(5):
        img = x[i].flip(2) if flip[i] else x[i]
        padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
        r, c = offsets[i].tolist()
        assert torch.equal(out[i], padded[:, r:r + 6, c:c + 7])
    assert torch.equal(augment_batch(x, None, torch.full((5, 2), 2), pad=2), x)


def test_a_forged_array_in_a_cifar_pickle_is_refused_not_built():
    """numpy's own unpickling trusts an array's shape and bytes (a damaged file crashed a test
    worker with a segfault); ours checks them and refuses."""
    import pickle

    from robustgan.data.files import safe_unpickle

    class Forged:
        def __reduce__(self):  # the shape says a million bytes, the data holds two
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (1000, 1000), np.dtype("u1"), False, b"xx"))

    with pytest.raises(pickle.UnpicklingError, match="shape"):
        safe_unpickle(pickle.dumps({b"data": Forged()}, protocol=2))


def test_python2_style_cifar_pickles_load_and_bytes_calls_are_bounded():
    """The official CIFAR-10 batches come from Python 2: under encoding="bytes" the dtype's
    type code and byte order arrive as bytes. bytes(n) and other codecs are refused (a few
    bytes of pickle could otherwise allocate anything)."""
    import pickle

    from robustgan.data.files import safe_unpickle

    class Dtype:
        def __reduce__(self):
            return (np.dtype, (b"u1", 0, 1), (3, b"|", None, None, None, -1, -1, 0))

    class Array:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (2, 3072), Dtype(), False, bytes(range(256)) * 24))

    batch = safe_unpickle(pickle.dumps({b"data": Array(), b"labels": [3, 5]}, protocol=2))
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (2, 3072) and batch[b"labels"] == [3, 5]

    class Huge:
        def __reduce__(self):
            return (bytes, (10 ** 11,))

    with pytest.raises(pickle.UnpicklingError, match="bytes call"):
        safe_unpickle(pickle.dumps({b"data": Huge()}, protocol=2))
