"""A user's own images: an image folder and an .npz written here from digits train a PGD-AT
model through the CLI; every bad input exits 2 with one line naming the file and leaves no
run behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import robustgan
from robustgan.config import load_config
from robustgan.errors import ConfigError
from robustgan.methods import Geometry, method_class
from tests.helpers import assert_one_line, run_main

N_TRAIN, N_TEST = 400, 120
# PGD-2 AT at eps 0.1 for a few short epochs (SCHEDULE): enough to learn digits, seconds on a CPU
TRAIN = ["-c", "configs/pgd-at-digits.toml", "--set", "train.batch_size=32",
         "--set", "method.steps=2", "--set", "method.eps=0.1", "--set", "method.step_size=0.06",
         "--set", "train.eval_every=100", "--set", "train.eval_limit=32"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """(image folder, .npz) holding the first 400 train and 120 test digits."""
    root = tmp_path_factory.mktemp("user")
    x, y = robustgan.data.load("digits", split="train")
    xt, yt = robustgan.data.load("digits", split="test")
    splits = {"train": (x[:N_TRAIN], y[:N_TRAIN]), "test": (xt[:N_TEST], yt[:N_TEST])}
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / "folder" / split / f"digit-{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    # NHWC, as most NumPy pipelines store images
    np.savez(root / "digits.npz", **{f"{k}_{split}": (v.permute(0, 2, 3, 1) if k == "x" else v).numpy()
                                     for split, pair in splits.items() for k, v in zip("xy", pair)})
    return root / "folder", root / "digits.npz"


def test_imagefolder_loads_like_torchvision(user_files):
    folder, _ = user_files
    x, y = robustgan.data.load("imagefolder", folder, "test")
    xt, yt = robustgan.data.load("digits", split="test")
    order = torch.argsort(yt[:N_TEST], stable=True)  # folders list class by class, files in name order
    assert x.shape == (N_TEST, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(y, yt[:N_TEST][order]) and torch.equal(x, xt[:N_TEST][order])
    layout = robustgan.data.describe("imagefolder", folder)
    assert layout.classes == tuple(f"digit-{c}" for c in range(10)) and (layout.channels, layout.image_size) == (1, 28)
    rgb, _ = robustgan.data.load("imagefolder", folder, "test", channels=3, image_size=32)
    assert rgb.shape == (N_TEST, 3, 32, 32)


# (epochs, clean bar, PGD-10 bar at eps 0.1) on the 120 test images, far above chance (10%). The .npz trains shorter: its arrays are compared with the digits' below, here it is the
# CLI's path. Measured at 1 / 2 threads: folder 84.2% / 80.8%, PGD 48.3% / 50.8%; .npz 48.3% /
# 49.2%, PGD 29.2% / 32.5% (16 images or more to spare).
SCHEDULE = {"imagefolder": (4, 0.65, 0.3), "npz": (3, 0.3, 0.15)}


@pytest.mark.parametrize("kind", ["imagefolder", "npz"])
def test_user_data_trains_pgd_at_through_the_cli(kind, user_files, tmp_path, monkeypatch, capsys):
    root = user_files[0] if kind == "imagefolder" else user_files[1]
    epochs, clean, robust = SCHEDULE[kind]
    out = tmp_path / "run"
    done = run_main(["train", *TRAIN, "--set", f"train.epochs={epochs}", "--set", f'data.name="{kind}"',
                     "--data-root", root, "--out", out], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    cfg = robustgan.runs.RunDir(out).config()
    names = tuple(f"digit-{c}" for c in range(10)) if kind == "imagefolder" else tuple(map(str, range(10)))
    assert (cfg.data.channels, cfg.data.image_size, cfg.data.classes) == (1, 28, names)
    done = run_main(["eval", out, "--attack", "pgd", "--steps", "10", "--eps", "0.1", "--json"], monkeypatch, capsys)
    result = json.loads(done.stdout)
    assert result["n"] == N_TEST and result["clean"] > clean and result["results"][0]["accuracy"] > robust
    png = next((user_files[0] / "test" / "digit-3").iterdir())
    done = run_main(["predict", out, png], monkeypatch, capsys)
    assert done.stdout.strip().split("\t")[3] == names[int(done.stdout.split("\t")[1])]


def _bad_folder(user_files, tmp_path, case):
    folder = tmp_path / "folder"
    shutil.copytree(user_files[0], folder)
    if case == "empty class":
        target = folder / "train" / "digit-4"
        shutil.rmtree(target)
        target.mkdir()
    elif case == "not an image":
        target = folder / "train" / "digit-2" / "notes.png"
        target.write_text("not an image")
    elif case == "mixed sizes":
        target = folder / "test" / "digit-5" / "big.png"
        Image.new("L", (32, 32)).save(target)
    elif case == "class mismatch":
        target = folder / "test" / "digit-7"
        target.rename(folder / "test" / "seven")
    return folder, target


def _bad_npz(user_files, tmp_path, case):
    arrays = dict(np.load(user_files[1]))
    if case == "objects":
        arrays["y_test"] = np.array([object()] * len(arrays["y_test"]), dtype=object)
    elif case == "labels out of range":
        arrays["y_test"][0] = 10
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path, path


@pytest.mark.parametrize("kind,case,message", [
    ("imagefolder", "empty class", "is an empty class folder"),
    ("imagefolder", "not an image", "is not a readable image"),
    ("imagefolder", "mixed sizes", "set data.image_size"),
    ("imagefolder", "class mismatch", "differ from train/'s: no folder"),
    ("npz", "objects", "holds Python objects"),
    ("npz", "labels out of range", "out of range"),
])
def test_bad_user_data_is_one_line_and_leaves_no_run(kind, case, message, user_files, tmp_path, monkeypatch,
                                                     capsys):
    root, culprit = (_bad_folder if kind == "imagefolder" else _bad_npz)(user_files, tmp_path, case)
    out = tmp_path / "run"
    done = run_main(["train", *TRAIN, "--set", f'data.name="{kind}"', "--data-root", root, "--out", out],
                    monkeypatch, capsys)
    assert_one_line(done, message)
    assert str(culprit) in done.stderr  # names the file or folder
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_mixed_sizes_are_resized_when_data_image_size_is_set(user_files, tmp_path):
    folder, _ = _bad_folder(user_files, tmp_path, "mixed sizes")
    x, _ = robustgan.data.load("imagefolder", folder, "test", image_size=28)
    assert x.shape == (N_TEST + 1, 1, 28, 28)


def test_atgan_picks_a_table_1_generator_by_channels_and_says_which():
    cfg = load_config(None, ['method.name="atgan"', 'data.name="npz"', 'data.root="x.npz"'])
    grey, colour = Geometry(1, 28, 10), Geometry(3, 32, 10)
    assert len(method_class("atgan").build_defended(cfg, grey)[0].body[-1].weight) == 1  # MNIST G, 1 channel out
    model = method_class("atgan").build_defended(cfg, colour)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="atgan_g_mnist maps 1x30x30 images to 1x32x32; set data.image_size to 28"):
        method_class("atgan").build_defended(cfg, Geometry(1, 30, 10))


def test_npz_layouts_and_channel_conversion(tmp_path):
    """NCHW, NHWC and NHW arrays load alike; RGB -> grey uses Pillow's "L" weights."""
    x, y = robustgan.data.load("digits", split="test")
    x, y = x[:40], y[:40]
    grey = x.numpy()
    for name, images in {"nchw": grey, "nhwc": grey.transpose(0, 2, 3, 1), "nhw": grey[:, 0]}.items():
        np.savez(tmp_path / f"{name}.npz", x_train=images, y_train=y.numpy(), x_test=images, y_test=y.numpy())
        loaded, labels = robustgan.data.load("npz", tmp_path / f"{name}.npz", "test")
        assert torch.equal(loaded, x) and torch.equal(labels, y), name
    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=np.arange(4), x_test=rgb, y_test=np.arange(4))
    as_grey, _ = robustgan.data.load("npz", tmp_path / "rgb.npz", "test", channels=1)
    pillow = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in rgb])
    assert np.abs(as_grey[:, 0].numpy().astype(int) - pillow).max() <= 1
    single = tmp_path / "one.npy"
    np.save(single, grey)
    with pytest.raises(robustgan.errors.DataError, match="is a single array, not an .npz archive"):
        robustgan.data.load("npz", single, "test")


def test_a_test_only_folder_is_enough_once_the_layout_is_known(user_files, tmp_path):
    test_only = tmp_path / "folder"
    shutil.copytree(user_files[0] / "test", test_only / "test")
    classes = tuple(f"digit-{c}" for c in range(10))
    x, y = robustgan.data.load("imagefolder", test_only, "test", channels=1, image_size=28, classes=classes)
    assert len(y) == N_TEST
    reordered = classes[::-1]  # data.classes in another order: labels follow it
    _, y2 = robustgan.data.load("imagefolder", test_only, "test", channels=1, image_size=28, classes=reordered)
    assert torch.equal(y2, 9 - y)
