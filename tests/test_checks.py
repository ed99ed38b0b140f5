"""The gradient-masking checks: a planted-masking suite (each defect trips the checks it
should, honest models trip none) on the whole digits test split (359 images, so the paired
statistics run at a realistic n), the paired rule itself, and skipped checks."""

from __future__ import annotations

import json

import pytest
import torch

from robustgan.attacks.apgd import margin
from robustgan.evaluation.checks import (BOUND_EPS, CHECKS, CheckResult, CheckSettings, check_gradients, check_model,
                                       check_scale, checking, overall_status, summary_line)
from robustgan.evaluation.paired import ALPHA, paired, sign_test
from robustgan.report.html import check_html
from robustgan.runs import RunDir
from tests.conftest import without_sweep
from tests.planted import (NaNGradients, NoisyInputs, RoundInputs, SaturatedSoftmax, ScaledLogits,
                           ShatteredGradients, ThresholdInputs, record_margins)


def moderate_scale(model, x) -> float:
    """The constant that makes ~3% of clean points' CE gradients exactly zero: float32
    softmax gives exp(-m * scale) = 0 once m * scale > ~100, m the point's logit margin.
    (About 18 for the tiny PGD-AT model; a constant a user could easily have.)"""
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).dtype))
    return 100 / (-margin(logits, logits.argmax(1))).quantile(0.97).item()


# Cheap attacks (the model is tiny) at the eps the model trained at
SETTINGS = dict(eps=0.2, steps=10, long_steps=40, restarts=2, ensemble_steps=20, targets=1, unbounded_steps=50,
                autoattack=False, queries=100)
# Deterministic gross masking (quantised, x1e4, softmax, shattered) moves accuracy by tens of
# points: the paired rule sees a 10% gap from n = 70, so 150 images suffice (tests/stress.py --margins
# measures every required check comfortable there, on both kinds and every float path). The moderate scale
# moves CE-PGD by a few points and noise's protocol gap is near its minimum effect: those keep all
# 359 (the honest models too: no warn at the largest n we test).
GROSS_N = 150


def tripped(model, x_test, y_test, surrogate, seed, n=None):
    x_test, y_test = x_test[:n], y_test[:n]
    results = check_model(model.eval(), (x_test * 255).round().to(torch.uint8), y_test,
                          CheckSettings(**SETTINGS, seed=seed), surrogate=surrogate)
    assert {r.name for r in results if r.status == "skipped"} == {"autoattack", "graybox"}
    return {r.name for r in results if r.status == "warn"}, results


# Each honest model with the other of its kind as the transfer check's surrogate, on its own digits
HONEST = {"trained_tiny": ("robust_tiny", "digits"), "robust_tiny": ("trained_tiny", "digits"),
          "trained_bn": ("robust_bn", "digits_rgb"), "robust_bn": ("trained_bn", "digits_rgb")}


@pytest.mark.statistical
@pytest.mark.parametrize("honest", list(HONEST))
def test_honest_models_trip_no_check(honest, request, seed):
    model = request.getfixturevalue(honest)
    other, data = (request.getfixturevalue(name) for name in HONEST[honest])
    warned, results = tripped(model, data[2], data[3], other, seed)
    record_margins(f"honest {honest}", results, set(), set())
    assert warned == set(), [r.detail for r in results if r.status == "warn"]


# Under test-time noise every attack scores against fresh noise draws, so more starts or steps
# may legitimately win (a true finding, but one that depends on the draws), and how far PGD-k
# overstates the ensemble is a gap near the protocol check's minimum effect, and Square's accepted
# queries are scored on noise draws too: allowed, not required. For the same reason two PGD-k
# with different losses differ by the draws: DLR-PGD and the unsaturated CE-PGD against CE-PGD
# measured up to 1.8x and 3.1x their minimum effects, at p = 0.09 (tests/stress.py --margins).
NOISE_MAY_TRIP = {"restarts", "long_pgd", "protocol", "gradient_free", "loss_invariance", "scale"}


# The ensemble's gradient-free stage (Square) sees through gross masking, so its accuracy at eps
# 0.5 may fall below the largest class share: bound may or may not warn there. Where the
# masking moves the number by only a few points (logits x 1e4 or x 18: Square finds 8-11 points
# gradients missed, measured) gradient_free sits near its minimum effect: allowed either way.
EITHER_BOUND = {"bound"}
# On the wrappers Square sees through, the protocol gap (PGD-10 against the ensemble) depends on
# how much the tests' 100-query stage finds: measured 26-35 points against protocol's 25; and
# white-box PGD still works a little there, so transfer's gap is a few points (80-83% against
# 85-88%), near its minimum effect. Both allowed either way.
NEAR_GROSS = EITHER_BOUND | {"protocol", "transfer"}
# Where input gradients are exactly zero (quantised, thresholded inputs) FGSM stays at the clean
# image while PGD scores only its random start, which can land a misclassified point back on
# the right side: FGSM "wins" on a handful of points (9 vs 0 at one seed of 20), either way; and
# PGD with restarts scores more random starts than PGD, which fool a few more points (measured up
# to 0.67x restarts' minimum effect at p = 0.004, tests/stress.py --margins): either way.
ZERO_GRADIENTS = NEAR_GROSS | {"fgsm_vs_pgd", "restarts"}


@pytest.mark.parametrize("wrap,trips,may_trip,n", [
    (RoundInputs, {"gradients", "unbounded", "gradient_free"}, ZERO_GRADIENTS, GROSS_N),
    # transfer's gain over white-box PGD depends on the model (the CE gradient survives on the
    # points of smallest margin): 2.75x its minimum effect at p up to 0.002 on the tiny CNN, no
    # gain at all on the BatchNorm model (tests/stress.py --margins): allowed, not required
    (lambda m: ScaledLogits(m, 1e4), {"gradients", "loss_invariance", "scale", "unbounded", "protocol"},
     {"gradient_free", "transfer"}, GROSS_N),
    # every other check passes; DLR-PGD is itself a point or two weaker than CE-PGD on a PGD-AT
    # model, which offsets much of a moderate scale's effect: loss_invariance may or may not warn;
    # the scale saturates unbounded PGD's CE on the points of largest margin, which leaves 3-7% of
    # them correct against unbounded's bar of 5% (both kinds, every float path), and PGD-10
    # overstates the ensemble by up to 17 points on the BatchNorm model, near protocol's 25: either way
    (lambda m: ScaledLogits(m, "moderate"), {"scale"}, {"loss_invariance", "gradient_free", "unbounded", "protocol"},
     None),
    (lambda m: NoisyInputs(m, seed=0), {"deterministic", "unbounded"}, NOISE_MAY_TRIP, None),
    # PGD-10 on probabilities overstates the ensemble by ~18 points, near protocol's 25, and transfer
    # from the surrogate beats it by a few points, near transfer's minimum effect: either way
    (SaturatedSoftmax, {"logits", "gradients", "unbounded", "gradient_free"}, EITHER_BOUND | {"protocol", "transfer"},
     GROSS_N),
    # random gradients make every PGD step a random step, as zero gradients leave only the random
    # start: FGSM and restarts against PGD are comparisons of random draws (measured up to 1.7x
    # and 0.8x their minimum effects at p = 0.03 and 0.008 on 150 images): either way
    (lambda m: ShatteredGradients(m, seed=0), {"unbounded", "gradient_free"}, ZERO_GRADIENTS, GROSS_N),
    (ThresholdInputs, {"gradients", "unbounded", "gradient_free"}, ZERO_GRADIENTS, GROSS_N),
], ids=["quantised", "logits-x1e4", "logits-x-moderate", "noise", "softmax", "shattered", "threshold"])
@pytest.mark.statistical
def test_planted_masking_trips_its_checks(wrap, trips, may_trip, n, model_kind, seed, request):
    robust, surrogate, x_test, y_test = model_kind
    model = wrap(robust)
    if hasattr(model, "generator"):  # the noisy and shattered wrappers draw from their own generator
        model.generator.manual_seed(seed)
    if getattr(model, "scale", None) == "moderate":
        model.scale = moderate_scale(robust, x_test)
        assert 10 < model.scale < 40
    warned, results = tripped(model, x_test, y_test, surrogate, seed, n=n)
    record_margins(without_sweep(request.node.name).split("[")[1].rstrip("]"), results, trips, may_trip)
    assert trips <= warned <= trips | may_trip, {r.name: r.detail for r in results}


@pytest.mark.statistical
def test_moderate_scale_inflates_pgd_while_the_ensemble_holds(robust_tiny, digits, seed):
    """The case the loss-invariance and scale checks exist for: the papers' PGD number rises by
    a few points (measured 24 vs 7 to 24 vs 11 discordant points over seeds: near the paired
    rule's threshold, so required only not to fall: scaling never makes PGD significantly
    stronger here), while the worst-case ensemble (APGD-T on DLR, Square on the margin) does not
    move beyond chance in either direction (measured 4 vs 4 discordant)."""
    *_, x_test, y_test = digits
    x = (x_test * 255).round().to(torch.uint8)
    scaled = ScaledLogits(robust_tiny, moderate_scale(robust_tiny, x_test)).eval()

    def check(model):  # 3 targets, all on every point (APGD-T is what cannot be masked by scale)
        return checking(model, x, y_test, CheckSettings(**SETTINGS | {"targets": 3}, seed=seed))

    assert not paired(check(robust_tiny).pgd(), check(scaled).pgd()).excess(0.0)  # the scaled PGD is no stronger
    honest, on_scaled = check(robust_tiny).ensemble(), check(scaled).ensemble()
    assert not paired(on_scaled, honest).excess(0.0) and not paired(honest, on_scaled).excess(0.0)


# The planted scale suite: logits times k (the moderate scale above is ~18; 1e4 is in the planted
# suite). Measured on robust_tiny, PGD-10 at eps 0.2, 359 images: k = 4 makes CE-PGD 4 points
# *stronger* (a sharper softmax), 8 and 12 move it by less than chance, 18 raises it 5 points
# (25 vs 7 discordant), 50 by 15; the scale check warns at 12 (12 vs 1), 18 (26 vs 0) and 50.
SCALES = (4, 8, 12, 18, 50)


@pytest.mark.statistical
def test_scale_check_warns_whenever_scaling_raises_pgd(robust_tiny, digits, seed):
    """For every k: if PGD-k on logits x k is significantly weaker than on the logits (beyond
    the scale check's minimum effect, at this n), the scale check warns. Not vacuous: k >= 18
    raises it; on the honest model it passes (measured: not one point differs)."""
    *_, x_test, y_test = digits
    x = (x_test * 255).round().to(torch.uint8)
    on_honest = checking(robust_tiny, x, y_test, CheckSettings(**SETTINGS, seed=seed))
    honest, honest_check = on_honest.pgd(), check_scale(on_honest)
    assert honest_check.status == "pass", honest_check.detail
    raised = set()
    for k in SCALES:
        on_scaled = checking(ScaledLogits(robust_tiny, k).eval(), x, y_test, CheckSettings(**SETTINGS, seed=seed))
        rise = paired(on_scaled.pgd(), honest)  # the unscaled model's PGD fooling more
        result = check_scale(on_scaled)
        if rise.excess(CHECKS["scale"].min_effect, on_scaled.settings.alpha):
            raised.add(k)
            assert result.status == "warn", (k, rise.describe(), result.detail)
    # not vacuous: k = 50 raises PGD by 15 points (61 vs 0); k = 18's rise (25 vs 7) is near the
    # threshold and may go either way
    assert 50 in raised, raised


def test_nan_gradients_fail_the_gradients_check(trained_tiny, digits):
    *_, x_test, y_test = digits
    x = (x_test * 255).round().to(torch.uint8)
    result = check_gradients(checking(NaNGradients(trained_tiny).eval(), x, y_test, CheckSettings(eps=0.2)))
    assert result.status == "warn" and result.values["nonfinite_fraction"] == 1.0
    assert check_gradients(checking(trained_tiny, x, y_test, CheckSettings(eps=0.2))).status == "pass"


def test_sign_test_is_exact():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(3, 1) == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2)
    assert sign_test(0, 7) == 1.0


def test_paired_rule_false_alarm_rate_is_at_most_alpha():
    """Two attacks of equal strength, each point fooled independently by each with its own
    probability (far noisier than real attacks: a third of the points discordant): the test
    alone warns on at most alpha of 2000 test sets of 359 points (exact tests are
    conservative: 12 here); a minimum effect can only lower that."""
    gen = torch.Generator().manual_seed(0)
    alarms = 0
    for _ in range(2000):
        p_fooled = torch.rand(359, generator=gen)
        a, b = (torch.rand(359, generator=gen) >= p_fooled for _ in range(2))
        alarms += paired(a, b).excess(0.0)
    assert 0 < alarms <= 2000 * ALPHA


def test_paired_rule_warns_on_a_planted_gap_from_n_70():
    """An attack fooling an extra 10% of points: p = 2^-(n / 10) < 0.01 from n = 70 on."""
    for n in range(10, 401, 10):
        ref = torch.ones(n, dtype=torch.bool)
        alt = ref.clone()
        alt[: n // 10] = False
        assert paired(ref, alt).excess(0.05) == (n >= 70), n


@pytest.mark.statistical
def test_identical_attacks_never_warn_over_seeds(robust_tiny, digits, seed):
    """PGD-10 against PGD-10 from other random starts, 8 seeds on the 359 test images: the
    rule never warns with the smallest minimum effect of any check. The test alone (no minimum
    effect) may false-alarm with probability <= alpha per seed, so at most one of 8 may
    (two or more: probability < 8 choose 2 * alpha^2 < 0.3% on any machine)."""
    *_, x_test, y_test = digits
    x = (x_test * 255).round().to(torch.uint8)
    alarms = 0
    for k in range(8):
        a = checking(robust_tiny, x, y_test, CheckSettings(eps=0.2, steps=10, seed=seed + k)).pgd()
        b = checking(robust_tiny, x, y_test, CheckSettings(eps=0.2, steps=10, seed=seed + k + 100)).pgd()
        result = paired(a, b)
        assert result.only_alt + result.only_ref > 0  # the two starts do disagree on some points
        assert not result.excess(min(c.min_effect for c in CHECKS.values() if c.min_effect is not None)), (k, result)
        alarms += result.excess(0.0)
    assert alarms <= 1


def test_summary_names_skipped_checks_and_never_counts_them_as_passed():
    results = [CheckResult("gradients", "pass", "", {}), CheckResult("transfer", "skipped", "", {"reason": "no surrogate"}),
               CheckResult("autoattack", "skipped", "", {"reason": "--no-autoattack"})]
    assert summary_line(results) == "1 passed, 2 skipped (transfer: no surrogate; autoattack: --no-autoattack)"
    assert overall_status(results) == "pass"
    results.append(CheckResult("restarts", "warn", "", {}))
    assert overall_status(results) == "warn" and "1 warned (restarts)" in summary_line(results)


def test_report_shows_skipped_checks_in_a_neutral_colour(tmp_path):
    run = RunDir(tmp_path)
    checks = [CheckResult("gradients", "pass", "ok", {}), CheckResult("transfer", "skipped", "skipped: no surrogate",
                                                                       {"reason": "no surrogate"})]
    report = {"eps": 0.2, "n": 10, "steps": 40, "long_steps": 100, "restarts": 2, "alpha": ALPHA,
              "checks": [c.as_dict() for c in checks]}
    run.file("check.json").write_text(json.dumps(report))
    page = check_html(run)
    assert '<td class="skipped">skipped</td>' in page and '<td class="pass">pass</td>' in page
    assert page.count('class="pass"') == 1 and "1 passed, 1 skipped (transfer: no surrogate)" in page


def test_bound_check_holds_cached_curve_points_to_the_largest_class_share(trained_tiny, digits, tmp_path):
    """A curve point at eps >= 0.5 above the largest class share (14.2% on digits) is an
    evaluation bug whatever the attack said: the bound check reads the run's cache for them."""
    from robustgan.evaluation.cache import EvalCache
    from robustgan.evaluation.checks import check_bound

    *_, x_test, y_test = digits
    x = (x_test * 255).round().to(torch.uint8)
    cache = EvalCache(path=tmp_path / "eval_cache.json", digest="w")
    half = torch.arange(len(y_test)) % 2 == 0  # 50% "correct"
    cache.put(half, attack="pgd", eps=0.5, n=len(y_test), seed=0, steps=40, step_size=0.03, restarts=1)
    cache.put(half, attack="pgd", eps=0.3, n=len(y_test), seed=0, steps=40, step_size=0.02, restarts=1)
    assert cache.highest_accuracies(len(y_test), BOUND_EPS) == {0.5: pytest.approx(0.5, abs=0.01)}
    assert cache.highest_accuracies(100, BOUND_EPS) == {}  # another subset: another bound
    honest = check_bound(checking(trained_tiny, x, y_test, CheckSettings(**SETTINGS)))
    assert honest.status == "pass" and honest.values["bound"] == pytest.approx(0.142, abs=0.001)
    flagged = check_bound(checking(trained_tiny, x, y_test, CheckSettings(**SETTINGS),
                                   reported=cache.highest_accuracies(len(y_test), BOUND_EPS)))
    assert flagged.status == "warn" and "exceed it" in flagged.detail
