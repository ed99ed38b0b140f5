import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustgan.attacks import AttackError, fgsm, pgd
from robustgan.evaluation.paired import paired
from tests.helpers import accuracy, tiny_cnn


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 1), steps=st.integers(1, 4), restarts=st.integers(1, 2), seed=st.integers(0, 100))
def test_pgd_stays_in_ball_and_box(eps, steps, restarts, seed):
    torch.manual_seed(seed)
    model = tiny_cnn()
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    x_adv = pgd(model, x, y, eps, steps, step_size=max(eps / 2, 1e-3), restarts=restarts)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    x_f = fgsm(model, x, y, eps)
    assert (x_f - x).abs().max() <= eps + 1e-6 and x_f.min() >= 0 and x_f.max() <= 1


def test_attacks_leave_parameters_and_mode_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(tiny_cnn(), torch.nn.Dropout(0.5)).train()
    model[0][0].weight.requires_grad_(False)  # a frozen layer must stay frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    pgd(model, x, y, 0.1, 3, 0.03, restarts=2)
    fgsm(model, x, y, 0.1)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not model[0][0].weight.requires_grad and model[0][2].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_attacks_run_in_eval_mode():
    seen = []
    model = tiny_cnn()
    model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    pgd(model.train(), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), 0.1, 2, 0.05)
    assert seen and not any(seen)


@pytest.mark.parametrize("kw,match", [
    (dict(eps=-0.1), "eps must be"), (dict(eps=1.5), "eps must be"), (dict(eps=float("nan")), "eps must be"),
    (dict(steps=0), "steps must be positive"), (dict(step_size=0.0), "step size"), (dict(restarts=0), "restarts"),
])
def test_bad_attack_settings_are_refused(kw, match):
    args = dict(eps=0.1, steps=2, step_size=0.01) | kw
    with pytest.raises(AttackError, match=match):
        pgd(tiny_cnn(), torch.rand(1, 1, 28, 28), torch.tensor([0]), **args)


@pytest.mark.statistical
def test_pgd_beats_fgsm_and_unbounded_reaches_zero(trained_tiny, digits):
    _, _, xt, yt = digits
    xt, yt = xt[:200], yt[:200]
    clean = correct(trained_tiny, xt, yt)
    assert clean.float().mean() > 0.9
    after_fgsm = correct(trained_tiny, fgsm(trained_tiny, xt, yt, 0.1), yt)
    after_pgd = correct(trained_tiny, pgd(trained_tiny, xt, yt, 0.1, 20, 0.01), yt)
    assert paired(clean, after_fgsm).excess(0.0)  # measured 125 vs 0 discordant of 200
    assert paired(after_fgsm, after_pgd).excess(0.0)  # PGD beats FGSM: measured 14 vs 0 (p = 6e-5)
    acc_unbounded = accuracy(trained_tiny, pgd(trained_tiny, xt, yt, math.inf, 100, 0.01), yt)
    assert acc_unbounded < 0.02


class CornerSwitch(torch.nn.Module):
    """Class 0 everywhere except where the corner pixel exceeds 0.55, then class 1; the input
    gradient is exactly zero (a comparison), so PGD stays at its random start and only the
    start decides: from x = 0.5 with eps 0.1 one start lands past 0.55 with probability 1/4."""

    def forward(self, x):
        switched = (x[:, 0, 0, 0] > 0.55).float()
        return torch.stack([torch.ones_like(switched), 2 * switched], 1) + 0 * x.sum((1, 2, 3))[:, None]


@pytest.mark.statistical
def test_restarts_find_what_one_start_misses(seed):
    """Restarts must help where only the start matters: 1 start fools each point with
    probability 1/4, 4 starts with 1 - (3/4)^4 = 0.68. On 400 points that is ~100 vs ~274
    fooled (a gap of ~25 standard deviations), and the 4 starts keep every point the first
    start (the same per-point seed) fooled."""
    model, x, y = CornerSwitch(), torch.full((400, 1, 4, 4), 0.5), torch.zeros(400, dtype=torch.long)
    ids = torch.arange(400)
    fooled = {r: model(pgd(model, x, y, 0.1, 3, 0.02, restarts=r, seed=seed, ids=ids)).argmax(1) != 0 for r in (1, 4)}
    assert 0.15 < fooled[1].float().mean() < 0.35 and fooled[4].float().mean() > 0.55, fooled
    assert not (fooled[1] & ~fooled[4]).any()


@pytest.mark.statistical
def test_restarts_keep_every_point_one_start_fools(trained_tiny, digits, seed):
    """On a trained model: the first of 4 restarts replays the single start (same per-point
    seed), so every point one start fools stays fooled, whatever the float rounding."""
    _, _, xt, yt = digits
    xt, yt = xt[:200], yt[:200]
    ids = torch.arange(200)
    single = trained_tiny(pgd(trained_tiny, xt, yt, 0.08, 5, 0.02, seed=seed, ids=ids)).argmax(1) == yt
    multi = trained_tiny(pgd(trained_tiny, xt, yt, 0.08, 5, 0.02, restarts=4, seed=seed, ids=ids)).argmax(1) == yt
    assert not (multi & ~single).any() and (~single).any()


def test_pgd_agrees_with_torchattacks(trained_tiny, digits):
    torchattacks = pytest.importorskip("torchattacks")
    _, _, xt, yt = digits
    # the same algorithm from the same (clean) start, Madry's last iterate: only float rounding differs
    ours = trained_tiny(pgd(trained_tiny, xt, yt, 0.1, 20, 0.01, random_start=False, best=False)).argmax(1) == yt
    attack = torchattacks.PGD(trained_tiny, eps=0.1, alpha=0.01, steps=20, random_start=False)
    theirs = trained_tiny(attack(xt, yt)).argmax(1) == yt
    assert (ours != theirs).float().mean() <= 0.01, (ours.float().mean(), theirs.float().mean())


def test_autoattack_runs_the_published_standard_version():
    """Standard AutoAttack as published (100 iterations, 9 targets, Square 5000 queries), not
    torchattacks' AutoAttack, whose parts keep their default 10 iterations (its issue #196)."""
    pytest.importorskip("torchattacks")
    from robustgan.attacks.autoattack import autoattack, standard_autoattack

    apgd_ce, apgd_t, fab_t, square = standard_autoattack(tiny_cnn(), 0.1, num_classes=10).attacks
    assert (apgd_ce.loss, apgd_ce.steps, apgd_ce.n_restarts) == ("ce", 100, 1)
    assert (apgd_t.steps, apgd_t.n_target_classes, apgd_t.n_restarts) == (100, 9, 1)
    assert (fab_t.steps, fab_t.multi_targeted, fab_t.n_target_classes) == (100, True, 9)
    assert (square.n_queries, square.p_init) == (5000, 0.8)
    assert standard_autoattack(tiny_cnn(20), 0.1, num_classes=20).attacks[1].n_target_classes == 9  # capped as in the paper
    torch.manual_seed(0)
    model, x = tiny_cnn().eval(), torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = autoattack(model, x, y, 0.1)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
