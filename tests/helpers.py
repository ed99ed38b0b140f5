"""What the tests share besides fixtures (those are in tests/conftest.py): the tiny CNN and its
training, the digits presets at test size, private copies of runs, the CLI in-process. Only the
processes that run tests import this: under pytest-xdist the controller never imports torch
(2.5 s before any worker starts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from filelock import FileLock

from robustgan.runtime import apply_mkldnn_switch, keep_freed_memory

ROOT = Path(__file__).parent.parent
# ROBUSTGAN_TEST_FLOAT64=1 gives the model_kind fixture's models in float64 (the extreme reference
# path of tests/stress.py --margins); ROBUSTGAN_MKLDNN=0 (runtime.apply_mkldnn_switch) runs the tests
# and the commands they start with oneDNN's kernels off
FLOAT64 = "ROBUSTGAN_TEST_FLOAT64"
CONFIGS = ROOT / "configs"


def configure_torch():
    """Torch's thread count, OMP_NUM_THREADS for the processes tests start, and glibc's
    allocator thresholds, for this process. `make test` runs two xdist workers: one thread each
    on two cores (two threads each would oversubscribe the cores and slow both); a plain
    `pytest` keeps two threads."""
    apply_mkldnn_switch()  # ROBUSTGAN_MKLDNN=0: oneDNN's kernels off, here and in the CLI processes tests start
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))
    # The CLI processes tests start compute with the worker's thread count: the same float reduction
    # order as this process (a run resumed here equals one trained there, bit for bit), and no
    # oversubscribed cores.
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    # As the CLI and fit do: the tests' attacks run in this process (a fifth to a third of a CPU step
    # otherwise goes to page faults; robustgan.runtime.keep_freed_memory)
    keep_freed_memory()


def trained_once(tmp_path_factory, name: str, train) -> Path:
    """The directory ``train(path)`` fills, made once per test session: under pytest-xdist the
    first worker that needs it trains it (holding a file lock), the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, shared by the workers
    root = base / f"trained-{name}"
    with FileLock(f"{root}.lock"):
        if not (root / ".trained").is_file():
            shutil.rmtree(root, ignore_errors=True)  # a half-trained try that failed
            train(root)
            (root / ".trained").touch()
    return root


def tiny_cnn(num_classes=10, in_channels=1):
    """A small CNN that trains on digits in a couple of seconds."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer (pixels stay in [0, 1] outside)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def bn_dropout_cnn(num_classes=10, in_channels=3):
    """The second kind of model every guarantee is tested on (the tiny CNN is the first): a
    Normalize layer inside, BatchNorm (running statistics an evaluation must not touch) and
    Dropout (noise if an evaluation left it in training mode), on 3-channel inputs."""
    return nn.Sequential(
        Normalize([0.5] * in_channels, [0.25] * in_channels),
        nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, num_classes),
    )


def rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey digits (N, 1, H, W) in [0, 1] as 3-channel images in [0, 1]: the digit, a dimmer
    copy on a grey background, and its negative."""
    return torch.cat([x, 0.5 * x + 0.25 * (1 - x), 1 - x], 1)


def tiny_once(tmp_path_factory, name: str, train, make=tiny_cnn) -> nn.Module:
    """A model of ``make()`` (the tiny CNN) trained by ``train(model)`` once per session
    (``trained_once``; every worker loads the same weights, whatever its thread count), in
    eval mode."""
    from safetensors.torch import load_file, save_file

    def fit_and_save(root):
        root.mkdir(parents=True)
        torch.manual_seed(0)
        model = make()
        train(model)
        save_file(model.state_dict(), root / "model.safetensors")

    model = make()
    model.load_state_dict(load_file(trained_once(tmp_path_factory, name, fit_and_save) / "model.safetensors"))
    return model.eval()


def train_erm(model, x, y):
    """15 epochs of plain ERM with Adam."""
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model.train()(x[idx]), y[idx]).backward()
            opt.step()


def train_pgd_at(model, x, y):
    """8 epochs of PGD-5 adversarial training, eps ramped to 0.2 over the first 4."""
    from robustgan.attacks import pgd

    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(8):
        for idx in torch.randperm(len(y)).split(64):
            x_adv = pgd(model, x[idx], y[idx], 0.2 * min(1, (epoch + 1) / 4), 5, 0.06, best=False, check=False)
            opt.zero_grad()
            F.cross_entropy(model.train()(x_adv), y[idx]).backward()
            opt.step()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# Held-out metrics on 32 images, logged once after the last epoch (no test reads their values);
# channels_last as the demo trains: ATGAN trains in 19 s instead of 27 s on 2 cores.
FAST = ["train.eval_every=100", "train.eval_limit=32", "train.channels_last=true"]

# The digits presets as the tests train them: each preset's own recipe (model, method, eps,
# optimiser), shortened to a few epochs and fewer PGD steps so the session trains all of
# them in about a minute. The full presets run in `make demo` and docs/reproduction.md.
# Measured on 359 test images (1 and 2 threads give the same numbers, except where two are given):
# standard clean 95.5%; PGD-AT (PGD-2) clean 74% / 75%, PGD-20 at 0.2 30.6% / 29.2%; ATGAN clean
# 91% (first 200), PGD-20 33.5% / 30%; GAN-AT grad (on 960 training images: 1200 gave 20%, all
# 1438 17%) PGD-20 16.7% at one thread, 19.5% at two.
TEST_SIZE = {
    "standard-digits": ["train.epochs=4"],
    "pgd-at-digits": ["train.epochs=5", "method.ramp_epochs=2", "method.steps=2", "method.step_size=0.15"],
    "pgd-at-l2-digits": ["train.epochs=2", "method.ramp_epochs=1", "method.steps=2", "method.step_size=1.5"],
    "atgan-digits": ["train.epochs=4", "method.ramp_epochs=2", "method.steps=2", "method.step_size=0.15"],
    "gan-at-digits-grad": ["train.epochs=2", "data.train_limit=960"],
}

# The baseline presets at test size (tests/test_baselines.py): fewer epochs and inner steps, and the
# guard on 128 images (its gap on honest runs, 0.18-0.24, is 5 standard errors below its bar of 0.5).
BASELINES = {
    "fgsm-rs-digits": ["train.epochs=4", "train.guard_images=128"],
    "n-fgsm-digits": ["train.epochs=4", "train.guard_images=128"],
    "trades-digits": ["train.epochs=4", "method.steps=2", "method.step_size=0.15", "method.ramp_epochs=2"],
}


def train_preset(preset: str, out: Path, *extra: str):
    from robustgan.config import load_config
    from robustgan.train import fit

    return fit(load_config(CONFIGS / f"{preset}.toml", [*FAST, *TEST_SIZE.get(preset, []), *extra]), out, quiet=True)


def copy_run(run: Path, out: Path) -> Path:
    """A private copy of a shared run: its weights, config and metrics, none of the files that
    evaluation writes (caches, check.json, locks, half-written .tmp files)."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("eval_cache*", "check.json", "*.tmp", "*.lock",
                                                             "model_card*", "report*"))
    return out


def snapshot(module) -> dict:
    """A copy of every parameter and buffer."""
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> set:
    """Names of the parameters and buffers that differ from ``before``."""
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def run_main(args, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """The CLI's entry point in this process (same code path as the console script, no
    interpreter start-up): the exit code and what it printed."""
    from robustgan.cli import main

    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code or 0, captured.out, captured.err)


def assert_one_line(done, message, code=2):
    """Exit ``code`` and exactly one stderr line, an ``error:`` naming ``message``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert message in lines[0], lines[0]
