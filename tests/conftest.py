"""Shared fixtures: every test's own seed, small classifiers trained on digits, and the digits
presets trained once per test session (shared by pytest-xdist's workers through a file lock).
The helpers they use are in tests/helpers.py, imported where a test runs: xdist's controller,
which runs none, starts the workers without importing torch. CONTRIBUTING.md, "Adding a test",
says which fixture to use and what margin a requirement needs."""

from __future__ import annotations

import os
import random
import re
import zlib

import pytest
from hypothesis import settings

pytest.register_assert_rewrite("tests.helpers")  # its asserts (assert_one_line) explain failures as the tests' do

# Property tests draw the same examples on every run and machine: a failure reproduces, and a
# random draw never turns a green suite red (one once crashed a worker inside scipy). Finds
# worth keeping go into the tests as @example.
settings.register_profile("robustgan", derandomize=True, database=None)
settings.load_profile("robustgan")


def pytest_configure(config):
    """Threads and allocator for the processes that run tests (helpers.configure_torch); here
    rather than at import, so that xdist's controller, which only starts the workers, never
    imports torch."""
    xdist_controller = (not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"
                        and bool(getattr(config.option, "tx", None)))
    if not xdist_controller:
        from tests.helpers import configure_torch

        configure_torch()


# ROBUSTGAN_TEST_SEED=k runs every test under its k-th seed (tests/stress.py tries 20); with
# ROBUSTGAN_TEST_SEEDS=n each test marked `statistical` runs once per seed 0..n-1 in one session.
SEED_OFFSET, SEED_SWEEP = "ROBUSTGAN_TEST_SEED", "ROBUSTGAN_TEST_SEEDS"

# Fixtures that train a digits preset, by name -> the seconds it takes at one thread (what
# `prewarm` balances): filled by @preset.
PRESETS: dict[str, float] = {}


def preset(seconds: float):
    """A session fixture that trains digits presets (once per session, shared by the workers):
    the tests that use it are marked `slow`, run last, and each worker trains its share first."""
    def register(func):
        PRESETS[func.__name__] = seconds
        return pytest.fixture(scope="session")(func)
    return register


def pytest_generate_tests(metafunc):
    sweep = int(os.environ.get(SEED_SWEEP, "0"))
    if sweep and metafunc.definition.get_closest_marker("statistical"):
        metafunc.parametrize("seed_offset", range(sweep), indirect=True, ids=lambda k: f"seed{k}")


def pytest_collection_modifyitems(items):
    """Tests that need a digits preset trained are `slow` (make test runs them too), and run
    last: under pytest-xdist every worker first trains its share of the presets (`prewarm`), then
    runs the other tests, so no test waits on a preset another worker is still training."""
    def needs_preset(item) -> bool:
        return bool(PRESETS.keys() & set(getattr(item, "fixturenames", ())))

    for item in filter(needs_preset, items):
        item.add_marker(pytest.mark.slow)
    items.sort(key=needs_preset)  # stable: each group keeps its order


def without_sweep(nodeid: str) -> str:
    """The node id without the seed sweep's parameter: a test's k-th seed is its own seed plus k,
    whether k comes from the sweep or from ROBUSTGAN_TEST_SEED."""
    return re.sub(r"\[seed\d+\]$|-seed\d+(?=\]$)|(?<=[\[-])seed\d+-", "", nodeid)


@pytest.fixture
def seed_offset(request) -> int:
    return getattr(request, "param", int(os.environ.get(SEED_OFFSET, "0")))


@pytest.fixture(autouse=True)
def seed(request, seed_offset) -> int:
    """This test's own seed, from its node id (and the offset): torch, numpy and `random` are
    seeded with it before the test runs, so no result depends on which worker ran which test
    before it, or in what order. Tests pass it on to what draws from a seed of its own
    (attacks' random starts, planted noise's generator)."""
    import numpy as np
    import torch

    value = (zlib.crc32(without_sweep(request.node.nodeid).encode()) + seed_offset) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def digits():
    import robustgan

    x, y = robustgan.data.load("digits", split="train")
    xt, yt = robustgan.data.load("digits", split="test")
    return x.float() / 255, y, xt.float() / 255, yt


@pytest.fixture(scope="session")
def trained_tiny(digits, tmp_path_factory):
    """A tiny CNN trained with plain ERM on digits (clean test accuracy > 90%)."""
    from tests.helpers import tiny_once, train_erm

    return tiny_once(tmp_path_factory, "tiny-erm", lambda model: train_erm(model, *digits[:2]))


@pytest.fixture(scope="session")
def robust_tiny(digits, tmp_path_factory):
    """The tiny CNN after 8 epochs of PGD-5 adversarial training at eps 0.2 (about 3 s):
    a model with real robustness for the attack-strength tests (measured on the 359 test
    images: clean 87%, PGD-40 at eps 0.2 42%, APGD-CE 37%, the ensemble 33%)."""
    from tests.helpers import tiny_once, train_pgd_at

    return tiny_once(tmp_path_factory, "tiny-pgd-at", lambda model: train_pgd_at(model, *digits[:2]))


@pytest.fixture(scope="session")
def digits_rgb(digits):
    """The digits as 3-channel images (helpers.rgb): the second kind of input the guarantees are
    tested on."""
    from tests.helpers import rgb

    x, y, xt, yt = digits
    return rgb(x), y, rgb(xt), yt


@pytest.fixture(scope="session")
def robust_bn(digits_rgb, tmp_path_factory):
    """The second kind of model (helpers.bn_dropout_cnn: Normalize inside, BatchNorm, Dropout,
    3 channels) after robust_tiny's PGD-AT recipe on digits_rgb, in eval mode."""
    from tests.helpers import bn_dropout_cnn, tiny_once, train_pgd_at

    return tiny_once(tmp_path_factory, "bn-pgd-at", lambda model: train_pgd_at(model, *digits_rgb[:2]), bn_dropout_cnn)


@pytest.fixture(scope="session")
def trained_bn(digits_rgb, tmp_path_factory):
    """bn_dropout_cnn after plain ERM on digits_rgb (robust_bn's surrogate: another training recipe)."""
    from tests.helpers import bn_dropout_cnn, tiny_once, train_erm

    return tiny_once(tmp_path_factory, "bn-erm", lambda model: train_erm(model, *digits_rgb[:2]), bn_dropout_cnn)


# The kinds of model every guarantee is shown on: (robust model, its independently trained
# surrogate, the digits it reads). A test takes ``model_kind`` and is parametrized over KINDS.
KINDS = {"tiny": ("robust_tiny", "trained_tiny", "digits"), "bn-dropout-rgb": ("robust_bn", "trained_bn", "digits_rgb")}


@pytest.fixture(params=list(KINDS))
def model_kind(request):
    """(robust model, surrogate, x_test, y_test) of each kind of KINDS: the tiny CNN, and a
    model with a Normalize layer, BatchNorm and Dropout on 3-channel inputs."""
    import copy

    from tests.helpers import FLOAT64

    robust, surrogate, data = (request.getfixturevalue(name) for name in KINDS[request.param])
    if os.environ.get(FLOAT64) == "1":  # the models in float64 (the attacks keep float32 pixels)
        robust, surrogate = copy.deepcopy(robust).double(), copy.deepcopy(surrogate).double()
    return robust, surrogate, data[2], data[3]


@preset(seconds=28)
def digits_runs(tmp_path_factory):
    """Standard and PGD-AT runs on digits (helpers.TEST_SIZE), trained once per session.
    Shared: a test that writes into a run (a cache, check.json) works on ``copy_run``."""
    from tests.helpers import train_preset, trained_once

    def train(root):
        train_preset("standard-digits", root / "standard")
        train_preset("pgd-at-digits", root / "pgd")

    return trained_once(tmp_path_factory, "digits", train)


@preset(seconds=6)
def l2_run(tmp_path_factory):
    """The L2 PGD-AT digits preset at test size (helpers.TEST_SIZE). Shared, as digits_runs."""
    from tests.helpers import train_preset, trained_once

    return trained_once(tmp_path_factory, "l2", lambda out: train_preset("pgd-at-l2-digits", out))


@preset(seconds=33)
def atgan_run(tmp_path_factory, digits_runs):
    """The ATGAN preset at test size, its loss network the standard run (``method.loss_net_run``;
    tests/test_atgan.py trains the loss-network sub-run itself)."""
    from tests.helpers import train_preset, trained_once

    return trained_once(tmp_path_factory, "atgan", lambda out: train_preset(
        "atgan-digits", out, f"method.loss_net_run={str(digits_runs / 'standard')!r}"))


@preset(seconds=28)
def gan_runs(tmp_path_factory):
    """One short run per formulation (and dual), plus the full digits preset for 'grad'."""
    from tests.helpers import train_preset, trained_once

    def train(root):
        for name in ("x", "xz", "gradx", "grad-dual"):
            train_preset(f"gan-at-digits-{name}", root / name, "train.epochs=1", "data.train_limit=64",
                         "train.eval_limit=16")
        train_preset("gan-at-digits-grad", root / "grad")

    return trained_once(tmp_path_factory, "gan", train)


@preset(seconds=48)
def baseline_runs(tmp_path_factory):
    """The baseline presets at test size (helpers.BASELINES)."""
    from tests.helpers import BASELINES, train_preset, trained_once

    def train(root):
        for preset, extra in BASELINES.items():
            train_preset(preset, root / preset, *extra)

    return trained_once(tmp_path_factory, "baselines", train)


def prewarm_share(worker: int, workers: int) -> list[str]:
    """The presets worker ``worker`` (of ``workers``) trains before its tests: longest first, each
    to the worker with the least work so far (a preset another needs is trained by whoever needs it
    first, under its lock)."""
    load, shares = [0.0] * workers, [[] for _ in range(workers)]
    for name in sorted(PRESETS, key=PRESETS.get, reverse=True):
        least = load.index(min(load))
        shares[least].append(name)
        load[least] += PRESETS[name]
    return shares[worker]


@pytest.fixture(scope="session", autouse=True)
def prewarm(request):
    """Under pytest-xdist each worker first trains its share of the presets, so no test later
    waits on a preset another worker is still training."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for name in prewarm_share(int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])):
        if name in needed:
            try:
                request.getfixturevalue(name)
            except Exception:  # the tests that use it report the failure; the others run
                pass
