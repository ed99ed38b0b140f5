"""Shared fixtures: small classifiers trained on digits, and the digits presets trained
once per test session (shared by pytest-xdist's workers through a file lock)."""

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
from hypothesis import settings

import robustgan
from robustgan.runtime import keep_freed_memory

# `make test` runs two xdist workers: one thread each on two cores (two threads each would
# oversubscribe the cores and slow both); a plain `pytest` keeps two threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
# The CLI processes tests start compute with the worker's thread count: the same float reduction
# order as this process (a run resumed here equals one trained there, bit for bit), and no
# oversubscribed cores.
os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
# As the CLI and fit do: the tests' attacks run in this process (a fifth to a third of a CPU step
# otherwise goes to page faults; robustgan.runtime.keep_freed_memory)
keep_freed_memory()
# Property tests draw the same examples on every run and machine: a failure reproduces, and a
# random draw never turns a green suite red (one once crashed a worker inside scipy). Finds
# worth keeping go into the tests as @example.
settings.register_profile("robustgan", derandomize=True, database=None)
settings.load_profile("robustgan")


FULL_PRESET_FIXTURES = {"digits_runs", "atgan_run", "gan_runs", "baseline_runs"}


def pytest_collection_modifyitems(items):
    """Tests that need a digits preset trained are `slow` (make test runs them too), and run
    last: under pytest-xdist every worker first trains its share of the presets (`prewarm`), then
    runs the other tests, so no test waits on a preset another worker is still training."""
    def needs_preset(item) -> bool:
        return bool(FULL_PRESET_FIXTURES & set(getattr(item, "fixturenames", ())))

    for item in filter(needs_preset, items):
        item.add_marker(pytest.mark.slow)
    items.sort(key=needs_preset)  # stable: each group keeps its order


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


def tiny_once(tmp_path_factory, name: str, train) -> nn.Module:
    """A tiny CNN trained by ``train(model)`` once per session (``trained_once``; every
    worker loads the same weights, whatever its thread count), in eval mode."""
    from safetensors.torch import load_file, save_file

    def fit_and_save(root):
        root.mkdir(parents=True)
        torch.manual_seed(0)
        model = tiny_cnn()
        train(model)
        save_file(model.state_dict(), root / "model.safetensors")

    model = tiny_cnn()
    model.load_state_dict(load_file(trained_once(tmp_path_factory, name, fit_and_save) / "model.safetensors"))
    return model.eval()


@pytest.fixture(scope="session")
def trained_tiny(digits, tmp_path_factory):
    """A tiny CNN trained with plain ERM on digits (clean test accuracy > 90%)."""
    x, y, _, _ = digits

    def train(model):
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(15):
            for idx in torch.randperm(len(y)).split(64):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()

    return tiny_once(tmp_path_factory, "tiny-erm", train)


@pytest.fixture(scope="session")
def robust_tiny(digits, tmp_path_factory):
    """The tiny CNN after 8 epochs of PGD-5 adversarial training at eps 0.2 (about 3 s):
    a model with real robustness for the attack-strength tests (measured on the 359 test
    images: clean 87%, PGD-40 at eps 0.2 42%, APGD-CE 37%, the ensemble 33%)."""
    from robustgan.attacks import pgd

    x, y, _, _ = digits

    def train(model):
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for epoch in range(8):
            for idx in torch.randperm(len(y)).split(64):
                x_adv = pgd(model, x[idx], y[idx], 0.2 * min(1, (epoch + 1) / 4), 5, 0.06, best=False, check=False)
                opt.zero_grad()
                F.cross_entropy(model.train()(x_adv), y[idx]).backward()
                opt.step()

    return tiny_once(tmp_path_factory, "tiny-pgd-at", train)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


CONFIGS = Path(__file__).parent.parent / "configs"
FAST = ["train.eval_every=100", "train.eval_limit=100",
        "train.channels_last=true"]  # the demo's setting: ATGAN trains in 19 s instead of 27 s on 2 cores

# The digits presets as the tests train them: each preset's own recipe (model, method, eps,
# optimiser), shortened to a few epochs and fewer PGD steps so the session trains all of
# them in about a minute. The full presets run in `make demo` and docs/reproduction.md.
# Measured on 359 test images (1 and 2 threads give the same numbers, except where two are given):
# standard clean 95.5%; PGD-AT clean 74%, PGD-20 at 0.2 33%; ATGAN clean 91% (first 200), PGD-20 33.5% / 30%; GAN-AT grad (on
# 960 training images: 1200 gave 20%, all 1438 17%) PGD-20 16.7% at one thread, 19.5% at two.
TEST_SIZE = {
    "standard-digits": ["train.epochs=4"],
    "pgd-at-digits": ["train.epochs=5", "method.ramp_epochs=2", "method.steps=3", "method.step_size=0.1"],
    "atgan-digits": ["train.epochs=4", "method.ramp_epochs=2", "method.steps=2", "method.step_size=0.15"],
    "gan-at-digits-grad": ["train.epochs=2", "data.train_limit=960"],
}


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


def train_preset(preset: str, out: Path, *extra: str):
    from robustgan.config import load_config
    from robustgan.train import fit

    return fit(load_config(CONFIGS / f"{preset}.toml", [*FAST, *TEST_SIZE.get(preset, []), *extra]), out, quiet=True)


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """Standard and PGD-AT runs on digits (TEST_SIZE presets), trained once per session.
    Shared: a test that writes into a run (a cache, check.json) works on ``copy_run``."""
    def train(root):
        train_preset("standard-digits", root / "standard")
        train_preset("pgd-at-digits", root / "pgd")

    return trained_once(tmp_path_factory, "digits", train)


@pytest.fixture(scope="session")
def atgan_run(tmp_path_factory, digits_runs):
    """The ATGAN preset at test size, its loss network the standard run (``method.loss_net_run``;
    tests/test_atgan.py trains the loss-network sub-run itself)."""
    return trained_once(tmp_path_factory, "atgan", lambda out: train_preset(
        "atgan-digits", out, f"method.loss_net_run={str(digits_runs / 'standard')!r}"))


@pytest.fixture(scope="session")
def gan_runs(tmp_path_factory):
    """One short run per formulation (and dual), plus the full digits preset for 'grad'."""
    def train(root):
        for name in ("x", "xz", "gradx", "grad-dual"):
            train_preset(f"gan-at-digits-{name}", root / name, "train.epochs=1", "data.train_limit=64",
                         "train.eval_limit=16")
        train_preset("gan-at-digits-grad", root / "grad")

    return trained_once(tmp_path_factory, "gan", train)


# The baseline presets at test size (tests/test_baselines.py): fewer epochs and inner steps, and the
# guard on 128 images (its gap on honest runs, 0.18-0.24, is 5 standard errors below its bar of 0.5).
BASELINES = {
    "fgsm-rs-digits": ["train.epochs=4", "train.guard_images=128"],
    "n-fgsm-digits": ["train.epochs=4", "train.guard_images=128"],
    "trades-digits": ["train.epochs=4", "method.steps=2", "method.step_size=0.15", "method.ramp_epochs=2"],
}


@pytest.fixture(scope="session")
def baseline_runs(tmp_path_factory):
    def train(root):
        for preset, extra in BASELINES.items():
            train_preset(preset, root / preset, *extra)

    return trained_once(tmp_path_factory, "baselines", train)


# Under pytest-xdist each worker first trains its share of the shared runs (about equal: measured
# at one thread, digits 36 s + ATGAN 45 s, baselines 52 s + GAN-AT 24 s), so no test later waits
# on a run another worker is training (that idled a core for ~50 s a session).
PREWARM = {"gw0": ("digits_runs", "atgan_run"), "gw1": ("baseline_runs", "gan_runs")}


@pytest.fixture(scope="session", autouse=True)
def prewarm(request):
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for name in PREWARM.get(os.environ.get("PYTEST_XDIST_WORKER", ""), ()):
        if name in needed:
            try:
                request.getfixturevalue(name)
            except Exception:  # the tests that use it report the failure; the others run
                pass


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


ROOT = Path(__file__).parent.parent


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
