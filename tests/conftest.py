"""Shared fixtures: small classifiers trained on digits, and the digits presets trained
once per test session (shared by pytest-xdist's workers through a file lock). The helpers
they use are in tests/helpers.py, imported where a test runs: xdist's controller, which
runs none, starts the workers without importing torch."""

from __future__ import annotations

import os

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
def digits_runs(tmp_path_factory):
    """Standard and PGD-AT runs on digits (helpers.TEST_SIZE), trained once per session.
    Shared: a test that writes into a run (a cache, check.json) works on ``copy_run``."""
    from tests.helpers import train_preset, trained_once

    def train(root):
        train_preset("standard-digits", root / "standard")
        train_preset("pgd-at-digits", root / "pgd")

    return trained_once(tmp_path_factory, "digits", train)


@pytest.fixture(scope="session")
def atgan_run(tmp_path_factory, digits_runs):
    """The ATGAN preset at test size, its loss network the standard run (``method.loss_net_run``;
    tests/test_atgan.py trains the loss-network sub-run itself)."""
    from tests.helpers import train_preset, trained_once

    return trained_once(tmp_path_factory, "atgan", lambda out: train_preset(
        "atgan-digits", out, f"method.loss_net_run={str(digits_runs / 'standard')!r}"))


@pytest.fixture(scope="session")
def gan_runs(tmp_path_factory):
    """One short run per formulation (and dual), plus the full digits preset for 'grad'."""
    from tests.helpers import train_preset, trained_once

    def train(root):
        for name in ("x", "xz", "gradx", "grad-dual"):
            train_preset(f"gan-at-digits-{name}", root / name, "train.epochs=1", "data.train_limit=64",
                         "train.eval_limit=16")
        train_preset("gan-at-digits-grad", root / "grad")

    return trained_once(tmp_path_factory, "gan", train)


@pytest.fixture(scope="session")
def baseline_runs(tmp_path_factory):
    """The baseline presets at test size (helpers.BASELINES)."""
    from tests.helpers import BASELINES, train_preset, trained_once

    def train(root):
        for preset, extra in BASELINES.items():
            train_preset(preset, root / preset, *extra)

    return trained_once(tmp_path_factory, "baselines", train)


# Under pytest-xdist each worker first trains its share of the shared runs (measured at one
# thread, digits 28 s + ATGAN 33 s, baselines 48 s + GAN-AT 28 s; work stealing evens out the
# rest), so no test later waits on a run another worker is training (that idled a core for ~50 s
# a session).
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
