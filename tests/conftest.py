"""Shared fixtures: a small classifier trained on digits once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustgan

torch.set_num_threads(2)


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
