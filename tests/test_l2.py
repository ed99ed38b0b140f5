"""The L2 threat model: the ball, its projection and random starts; every attack with an L2
version kept in the ball and the box; the ensemble, its Square stage and the checks in L2, on
both kinds of model; L-inf keys as they were; one-line refusals where L2 does not apply; and
the L2 digits preset through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustgan.attacks import AttackError, AttackSettings, get_attack, get_norm, robust_mask, worst_case
from robustgan.attacks.registry import ATTACKS, AttackArgs
from robustgan.evaluation.bounds import accuracy_bound
from robustgan.evaluation.checks import CheckSettings, check_model
from robustgan.evaluation.paired import paired
from tests.helpers import assert_one_line, copy_run, run_main

L2 = get_norm("l2")


def radius(x: torch.Tensor, eps: float) -> float:
    """An L2 radius scaled to the images' channels: the rgb digits repeat the grey ones three
    times, so the same per-pixel change has sqrt(3) times the L2 norm."""
    return eps * math.sqrt(x.shape[1])


def test_the_l2_projection_lands_in_the_ball_and_the_box_and_starts_are_uniform(seed):
    x = torch.rand(64, 3, 8, 8)
    far = x + 5 * torch.randn_like(x)
    eps = torch.rand(64) * 3
    projected = L2.project(far, x, eps)
    assert (L2.size(projected - x) <= eps + 1e-5).all() and projected.min() >= 0 and projected.max() <= 1
    before = far.clone()
    inside = L2.project(x + 1e-3 * torch.randn_like(x), x, 1.0).clamp(0, 1)
    assert torch.allclose(L2.project(inside, x, 1.0), inside)  # a point of the ball and box stays put
    assert torch.equal(far, before)  # project() leaves its argument as it was
    # uniform in the unit 16-ball: P(|u| <= r) = r^16, so half the draws lie within 0.5^(1/16)
    noise = L2.noise(torch.empty(4000, 1, 4, 4), seed, torch.arange(4000))
    sizes = L2.size(noise)
    assert sizes.max() <= 1 + 1e-6 and abs((sizes <= 0.5 ** (1 / 16)).float().mean().item() - 0.5) < 0.05
    assert noise.mean(0).abs().max() < 0.05  # no direction preferred (per-coordinate SD 0.24 / sqrt(4000))
    again = L2.noise(torch.empty(4000, 1, 4, 4), seed, torch.arange(4000))
    assert torch.equal(noise, again)  # drawn per point from the seed: a shard draws what one process draws


L2_ATTACKS = [name for name, spec in ATTACKS.items() if "l2" in spec.norms and name != "autoattack"]


@pytest.mark.parametrize("name", L2_ATTACKS)
def test_every_attack_with_an_l2_version_stays_in_the_l2_ball_and_the_box(name, model_kind, seed):
    model, _, xt, yt = model_kind
    x, y = xt[:12], yt[:12]
    eps = radius(x, 1.5)
    args = AttackArgs(steps=5, targets=2, seed=seed, ids=torch.arange(len(y)), queries=40, norm="l2")
    spec = get_attack(name)
    x_adv = spec.run(model, x, y, eps, args)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1, name
    assert (L2.size(x_adv - x) <= eps * (1 + 1e-5)).all(), (name, L2.size(x_adv - x).max().item())


def test_square_l2_moves_mass_between_windows_keeping_the_norm(seed):
    """Alg. 3: on 3 channels, a perturbation of norm eps keeps norm eps through a query before any
    rescaling (the budget left unused shared over the channels, window 2's mass moved into window 1)."""
    from robustgan.attacks.square_l2 import l2_update, tail_table

    delta = torch.randn(8, 3, 32, 32)
    delta = delta / L2.size(delta).view(-1, 1, 1, 1) * 2.0
    side = torch.tensor([3, 5, 7, 9, 15, 25, 31, 31]).view(-1, 1)
    grid = torch.arange(32)
    new = l2_update(delta, torch.full((8,), 2.0), torch.rand(8, 8), side, grid, grid, tail_table(32))
    assert torch.allclose(L2.size(new), torch.full((8,), 2.0), rtol=1e-4)
    assert not torch.allclose(new, delta)


def test_unbounded_l2_pgd_reaches_any_image(robust_tiny, digits):
    """eps inf in L2: the default step is the L2 length of L-inf's 0.01 (0.28 on 28x28 images), so
    PGD-100 moves as far as the L-inf unbounded attack and fools every point."""
    _, _, xt, yt = digits
    correct = robust_mask(robust_tiny, xt[:64], yt[:64], math.inf, AttackSettings("pgd", steps=100, norm="l2"))
    assert correct.float().mean() < 0.05


def test_fab_finds_misclassified_points_close_to_the_image(model_kind, seed):
    """FAB-T (``--attack fab``) is a minimum-norm attack: what it returns is misclassified and lies
    well inside the ball (APGD's examples sit on its sphere), on both kinds of model."""
    from robustgan.attacks.fab import fab

    model, _, xt, yt = model_kind
    x, y = xt[:40], yt[:40]
    eps = radius(x, 3.0)
    x_adv = fab(model, x, y, eps, steps=30, targets=2)
    moved = L2.size(x_adv - x) > 0
    with torch.no_grad():
        assert (model(x_adv[moved]).argmax(1) != y[moved]).all()
    assert moved.float().mean() > 0.5 and L2.size(x_adv - x)[moved].median() < 0.9 * eps


def test_the_fab_stage_settles_points_with_valid_examples_unmoved_by_what_keeps_the_decision(model_kind):
    """The ensemble's FAB-T stage (``fab_stage``) on both kinds of model, every point gated in (as
    if the gradient stages had brought each to its boundary at both eps): it flips a
    point only at the eps of at least the distance of an example that is misclassified, in the ball
    and the box; logits x 1e4 and softmax outputs (attacked through their logarithm, as the
    ensemble does) give the same points, FAB-T following the boundary z_y = z_t (two of 80 allowed
    each way for float rounding; measured: none)."""
    from robustgan.attacks.fab import fab_stage
    from robustgan.attacks.outputs import as_logits

    model, _, xt, yt = model_kind
    x, y = xt[:40], yt[:40]
    grid = [radius(x, 1.0), radius(x, 1.5)]

    def stage(net, examples=None):
        with torch.no_grad():
            net, logits = as_logits(net, net(x))
        clean = logits.argmax(1) == y
        correct = clean[:, None].repeat(1, len(grid)).cpu()
        clean_margin = torch.where(clean, -1.0, 1.0)  # every robust point gated: ratio 0 <= 0.3
        fab_stage(net, x, y, grid, correct, torch.zeros(len(y)), clean_margin, 3, 0.3, steps=30, examples=examples)
        return clean, correct

    examples = torch.zeros(len(grid), *x.shape)
    clean, correct = stage(model, examples)
    for k, e in enumerate(grid):
        fooled = clean & ~correct[:, k]
        ex = examples[k][fooled]
        with torch.no_grad():
            assert (model(ex).argmax(1) != y[fooled]).all()
        assert (L2.size(ex - x[fooled]) <= e + 1e-4).all() and (ex >= 0).all() and (ex <= 1).all()
    # not vacuous: measured 11 and 21 points of 40 fooled at the larger eps (tiny, bn-dropout-rgb)
    assert 0.1 < (clean & ~correct[:, 1]).float().mean() < 0.9 and (correct[:, 0] >= correct[:, 1]).all()
    for wrap in (lambda z: z * 1e4, lambda z: torch.softmax(z, 1)):
        _, wrapped = stage(torch.nn.Sequential(model, Lambda(wrap)))
        assert (wrapped & ~correct).sum() <= 2 and (correct & ~wrapped).sum() <= 2


class Lambda(torch.nn.Module):
    """``wrap`` (a function of the outputs) as a module."""

    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def forward(self, z):
        return self.wrap(z)


@pytest.mark.statistical
def test_the_l2_ensemble_runs_its_fab_stage_only_in_l2_and_counts_it(model_kind, seed):
    """In the L2 ensemble the FAB-T stage only adds fooled points, with examples in the ball;
    its passes are counted; its gate at 0 runs nothing; the L-inf ensemble has no such stage. Over
    the grid upwards (``Savings(descend=False)``) the stage's default gate takes points too, and
    every example it reports fools its point and lies in the ball."""
    from robustgan.attacks import Savings
    from robustgan.attacks.stages import ensemble_names

    model, _, xt, yt = model_kind
    x, y = xt[:40], yt[:40]
    grid = [radius(x, 1.0), radius(x, 1.5)]
    settings = AttackSettings(steps=10, queries=0, targets=3, seed=seed, norm="l2")
    without = worst_case(model, x, y, grid, settings, savings=Savings(fab_close=0))
    found = worst_case(model, x, y, grid, settings, savings=Savings(fab_close=1), keep_examples=True)
    assert "fab" not in without.by_stage and found.by_stage["fab"] > 0 and found.by_stage["fab-forwards"] > 0
    assert not (found.correct & ~without.correct).any()
    for k, e in enumerate(grid):
        assert (L2.size(found.examples[k] - x) <= e + 1e-4).all()
    assert "fab-t(3 targets)" in ensemble_names(3, 0, False, "l2") and not any(
        "fab" in name for name in ensemble_names(3, 0, False, "linf"))
    # the grid upwards keeps each point's margin at its largest robust eps for the stage's gate too
    upwards = worst_case(model, x, y, grid, settings, savings=Savings(descend=False), keep_examples=True)
    assert upwards.by_stage["fab"] > 0
    for k, e in enumerate(grid):
        fooled = ~upwards.correct[:, k] & upwards.clean
        assert (L2.size(upwards.examples[k] - x) <= e + 1e-4).all()
        with torch.no_grad():
            logits = model(upwards.examples[k][fooled].to(next(model.parameters()).dtype))
        assert (logits.argmax(1) != y[fooled]).all()


def test_fabs_boundary_step_is_the_shortest_step_onto_the_hyperplane_in_the_box(seed):
    """``boundary_step``: <w, d> = c within the box where reachable (either sign of c, gradient
    entries as small as float32 holds), the plain projection c w / |w|^2 where the box is far, and
    every coordinate at its bound where c is out of reach."""
    from robustgan.attacks.fab import boundary_step

    x, w = torch.rand(4, 3072), torch.randn(4, 3072) * 1e-3
    w[:, 0] = torch.tensor([1e-12, 1e-20, 1e-40, 0.0])  # one entry far below the rest
    d = boundary_step(w, torch.tensor([0.05, -0.05, 0.01, -0.02]), -x, 1 - x)
    assert torch.allclose((w * d).sum(1), torch.tensor([0.05, -0.05, 0.01, -0.02]), atol=1e-6)
    assert (x + d).min() >= 0 and (x + d).max() <= 1
    far = torch.full((2, 10), 100.0)
    w, c = torch.randn(2, 10), torch.tensor([0.3, -0.2])
    assert torch.allclose(boundary_step(w, c, -far, far), c[:, None] * w / (w * w).sum(1, keepdim=True), atol=1e-6)
    box = torch.ones(1, 10)
    assert torch.equal(boundary_step(torch.ones(1, 10), torch.tensor([100.0]), -box, box), box)  # out of reach


def test_standard_autoattack_in_l2_runs_each_part_in_l2(robust_tiny):
    """Every part of standard AutoAttack in L2 (APGD-CE, APGD-T, FAB-T, Square) is torchattacks' L2
    version with the published arguments; the examples are projected into the ball and the box
    (``autoattack``), so the reference is held to the same ball as ours (BENCHMARKS.md runs it)."""
    pytest.importorskip("torchattacks")
    from robustgan.attacks.autoattack import standard_autoattack

    parts = standard_autoattack(robust_tiny, 2.0, norm="l2").attacks
    assert [type(p).__name__ for p in parts] == ["APGD", "APGDT", "FAB", "Square"]
    assert all(p.norm == "L2" and p.eps == 2.0 for p in parts)


def test_linf_cache_keys_are_as_they_were_and_l2_keys_carry_the_norm():
    linf = AttackSettings().key(0.3, 100)
    assert linf == {"attack": "ensemble", "eps": 0.3, "n": 100, "seed": 0, "steps": 100, "restarts": 1, "targets": 9,
                    "queries": 5000}
    assert AttackSettings(norm="l2").key(0.3, 100) == linf | {"norm": "l2"}
    assert AttackSettings("pgd", norm="l2").label == "PGD-40, L2" and AttackSettings("pgd").label == "PGD-40"


def test_what_has_no_l2_version_refuses_it_in_one_line(robust_tiny, digits):
    import robustgan
    from robustgan.config import load_config
    from robustgan.errors import ConfigError
    from tests.helpers import CONFIGS

    _, _, xt, yt = digits
    with pytest.raises(AttackError, match="rays is defined in L-inf only, not in L2"):
        AttackSettings("rays", norm="l2").check()
    with pytest.raises(AttackError, match="rays is defined in L-inf only"):  # the one-batch-loop path too
        robust_mask(robust_tiny, xt[:4], yt[:4], 1.0, AttackSettings("rays", norm="l2"))
    with pytest.raises(AttackError, match="unknown norm 'l1'"):
        robustgan.evaluate(robust_tiny, xt[:4], yt[:4], 1.0, norm="l1")
    with pytest.raises(AttackError, match="the L2 threat model, norm l2"):
        robustgan.evaluate(robust_tiny, xt[:4], yt[:4], 2.0)  # an L2 radius given in L-inf
    for preset in ("fgsm-rs-digits", "n-fgsm-digits", "atgan-digits", "gan-at-digits-grad"):
        with pytest.raises(ConfigError, match="defined in linf only"):
            load_config(CONFIGS / f"{preset}.toml", ["method.norm=l2"])


def test_the_bound_rule_counts_the_points_whose_ball_holds_the_grey_image():
    x = torch.full((6, 1, 2, 2), 0.5)
    x[:3] += 0.25  # L2 distance 0.5 to the grey image
    x[3:] += 0.5  # distance 1.0
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    assert accuracy_bound(x, y, 0.4, "l2", 3) == 1.0  # no ball holds it: every point may be robust
    assert accuracy_bound(x, y, 0.5, "l2", 3) == pytest.approx(5 / 6)  # 3 inside, at most 2 (class 0) robust
    assert accuracy_bound(x, y, 1.0, "l2", 3) == pytest.approx(3 / 6)  # all inside: the largest class share
    assert accuracy_bound(x, y, 0.5, "linf", 3) == pytest.approx(3 / 6)  # L-inf at 0.5: every ball holds it


@pytest.mark.statistical
def test_the_l2_ensemble_is_at_least_l2_pgd_and_its_square_stage_sees_through_thresholding(model_kind, seed):
    """On both kinds of model, in L2: the ensemble is never weaker than the papers' PGD-40 beyond
    noise, and on the planted thresholding layer (zero gradients) the Square stage fools tens of
    points gradients cannot (measured on its 100 points at 3 sqrt(C), seeds 0-4: gradients alone
    88-92%, with Square 56-69%, a gap of 20-32 points on both kinds, twice the bar of 10)."""
    from tests.planted import ThresholdInputs

    robust, _, xt, yt = model_kind
    x, y = xt[:60], yt[:60]
    grid = [radius(x, 1.0), radius(x, 2.0)]
    found = worst_case(robust, x, y, grid, AttackSettings(steps=20, queries=200, seed=seed, norm="l2"))
    for k, e in enumerate(grid):
        protocol = robust_mask(robust, x, y, e, AttackSettings("pgd", steps=40, seed=seed, norm="l2"))
        assert not paired(found.correct[:, k], protocol).excess(0.0), e
    assert 0.3 < found.correct[:, 0].float().mean() < 0.95  # not vacuous (measured 0.60-0.77 on both kinds)
    masked, x, y = ThresholdInputs(robust), xt[:100], yt[:100]
    at = [radius(x, 3.0)]
    gradients = worst_case(masked, x, y, at, AttackSettings(steps=10, queries=0, seed=seed, norm="l2"))
    ensemble = worst_case(masked, x, y, at, AttackSettings(steps=10, queries=200, seed=seed, norm="l2"))
    assert paired(gradients.correct[:, 0], ensemble.correct[:, 0]).excess(0.1)


@pytest.mark.statistical
def test_honest_models_trip_no_check_in_l2(model_kind, seed):
    robust, surrogate, xt, yt = model_kind
    x = (xt[:100] * 255).round().to(torch.uint8)
    settings = CheckSettings(eps=radius(xt, 1.5), steps=10, long_steps=40, restarts=2, ensemble_steps=20, targets=1,
                             unbounded_steps=50, autoattack=False, queries=100, seed=seed, norm="l2")
    results = check_model(robust.eval(), x, yt[:100], settings, surrogate=surrogate)
    assert {r.name for r in results if r.status == "warn"} == set(), [r.detail for r in results if r.status == "warn"]
    bound = next(r for r in results if r.name == "bound")
    assert bound.values["eps"] == pytest.approx(0.5 * math.sqrt(xt[0].numel()))  # every ball holds the grey image


def test_the_l2_digits_preset_trains_and_its_curve_checks_and_card_render(l2_run, digits_runs, tmp_path, monkeypatch,
                                                                         capsys):
    run = copy_run(l2_run, tmp_path / "run")
    small = ["--limit", "16", "--steps", "5", "--targets", "1", "--queries", "20"]
    done = run_main(["eval", run, *small, "--json", "--min-norm"], monkeypatch, capsys)  # the run's own: L2, 2.0
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["norm"] == "l2" and [r["eps"] for r in result["results"]] == [2.0]
    assert 0 <= result["results"][0]["protocol_accuracy"] <= result["clean"]  # the papers' PGD-40 beside it, in L2
    fooled_at = torch.tensor([math.inf if d == "inf" else d for d in result["min_eps"]])
    assert ((fooled_at <= 2.0) | torch.isinf(fooled_at)).all() and (fooled_at >= 0).all()  # 0: misclassified clean
    done = run_main(["curve", run, "--eps", "1,2,3", *small, "--out", tmp_path / "curves", "--json"], monkeypatch, capsys)
    assert done.returncode == 0 and json.loads(done.stdout)[0]["norm"] == "l2", done.stderr
    done = run_main(["check", run, "--limit", "16", "--steps", "3", "--long-steps", "6", "--restarts", "2",
                     "--ensemble-steps", "3", "--targets", "1", "--queries", "20", "--no-autoattack"], monkeypatch, capsys)
    assert done.returncode in (0, 1) and (run / "check-l2.json").is_file() and not (run / "check.json").exists()
    assert json.loads((run / "check-l2.json").read_text())["norm"] == "l2"
    done = run_main(["card", run, "--eps", "1,2", *small], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert card["threat_model"] == "L2" and card["checks"]["status"] in ("pass", "warn")
    assert "| 2 (L2) |" in (run / "model_card.md").read_text()
    done = run_main(["report", run, "--eps", "1,2", "--limit", "16", "--steps", "2", "--ensemble-steps", "5",
                     "--targets", "1", "--queries", "20", "--no-check", "--out", tmp_path / "report.html"],
                    monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    assert "100 steps, L2" in page or "5 steps, L2" in page  # the curves' caption names the threat model
    assert "No check report" not in page  # the L2 checks (check-l2.json) are the ones shown
    done = run_main(["eval", run, "--norm", "linf"], monkeypatch, capsys)  # its eps are L2 radii
    assert_one_line(done, "pass --eps: this run's eval and training eps are in L2")
    done = run_main(["eval", run, "--attack", "rays", "--eps", "1"], monkeypatch, capsys)
    assert_one_line(done, "rays is defined in L-inf only")
    done = run_main(["curve", run, digits_runs / "pgd", "--eps", "0.1", *small, "--out", tmp_path / "mixed"],
                    monkeypatch, capsys)  # an L2 and an L-inf run: which norm is meant?
    assert_one_line(done, "these runs were trained in different norms (l2, linf): pass --norm")
