"""Shared fixtures: a small classifier trained on digits once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustgan

torch.set_num_threads(2)


FULL_PRESET_FIXTURES = {"digits_runs", "atgan_run", "gan_runs"}


def pytest_collection_modifyitems(items):
    """Tests that need a full digits preset trained are `slow` (make test runs them too)."""
    for item in items:
        if FULL_PRESET_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def tiny_cnn(num_classes=10, in_channels=1):
    """A small CNN that trains on digits in a couple of seconds."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


@pytest.fixture(scope="session")
def digits():
    x, y = robustgan.data.load("digits", split="train")
    xt, yt = robustgan.data.load("digits", split="test")
    return x.float() / 255, y, xt.float() / 255, yt


@pytest.fixture(scope="session")
def trained_tiny(digits):
    """A tiny CNN trained with plain ERM on digits (clean test accuracy > 90%)."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def robust_tiny(digits):
    """The tiny CNN after 8 epochs of PGD-5 adversarial training at eps 0.2 (about 3 s):
    a model with real robustness for the attack-strength tests (measured on the 359 test
    images: clean 87%, PGD-40 at eps 0.2 42%, APGD-CE 37%, the ensemble 33%)."""
    from robustgan.attacks import pgd

    x, y, _, _ = digits
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(8):
        for idx in torch.randperm(len(y)).split(64):
            x_adv = pgd(model, x[idx], y[idx], 0.2 * min(1, (epoch + 1) / 4), 5, 0.06, best=False, check=False)
            opt.zero_grad()
            F.cross_entropy(model.train()(x_adv), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


CONFIGS = Path(__file__).parent.parent / "configs"
FAST = ["train.eval_every=100", "train.eval_limit=100"]


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """Standard and PGD-AT runs on digits from the presets, trained once per session."""
    from robustgan.config import load_config
    from robustgan.train import fit

    root = tmp_path_factory.mktemp("runs")
    fit(load_config(CONFIGS / "standard-digits.toml", FAST), root / "standard", quiet=True)
    fit(load_config(CONFIGS / "pgd-at-digits.toml", FAST), root / "pgd", quiet=True)
    return root


def snapshot(module) -> dict:
    """A copy of every parameter and buffer."""
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> set:
    """Names of the parameters and buffers that differ from ``before``."""
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


ROOT = Path(__file__).parent.parent


def run_main(args, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """The CLI's entry point in this process (same code path as the console script, no
    interpreter start-up): the exit code and what it printed."""
    from robustgan.cli import main

    monkeypatch.setattr(sys, "argv", ["robustgan", *map(str, args)])
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code or 0, captured.out, captured.err)


def assert_one_line(done, message, code=2):
    """Exit ``code`` and exactly one stderr line, an ``error:`` naming ``message``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert message in lines[0], lines[0]
