"""Every input convention a PyTorch user brings to ``robustgan.evaluate``: outputs as a tuple, a
dict or an object with ``.logits``; probabilities that carry only decisions; float16 and float64
images; numpy, 0-d tensor and "8/255" radii; 2- and 3-class heads; labels outside the head; each
works or fails with one clear ``AttackError`` in Python's terms."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import robustgan
from robustgan.attacks import AttackError, AttackSettings
from tests.helpers import run_main

SMALL = dict(steps=5, targets=1, queries=20)  # a cheap default: these tests are about plumbing, not strength


class Outputs(torch.nn.Module):
    """The model with ``wrap`` applied to its outputs; a new module, left in training mode as a
    user would leave it."""

    def __init__(self, model, wrap):
        super().__init__()
        self.model, self.wrap = model, wrap

    def forward(self, x):
        return self.wrap(self.model(x))


SAME_DECISIONS = {
    "tuple": lambda z: (z, z.detach() * 0),
    "list": lambda z: [z],
    "dict": lambda z: {"features": z.detach(), "logits": z},
    "logits attribute": lambda z: SimpleNamespace(logits=z, hidden=None),
    "softmax": lambda z: torch.softmax(z, 1),
}


@pytest.mark.statistical
@pytest.mark.parametrize("convention", list(SAME_DECISIONS))
def test_output_conventions_give_the_logits_models_result(convention, model_kind, seed):
    model, _, xt, yt = model_kind
    x, y = xt[:40], yt[:40]
    plain = robustgan.evaluate(model, x, y, eps=[0.1, 0.2], seed=seed, **SMALL)
    wrapped = robustgan.evaluate(Outputs(model, SAME_DECISIONS[convention]), x, y, eps=[0.1, 0.2], seed=seed, **SMALL)
    assert wrapped.clean == plain.clean and wrapped.decisions_only == 0
    # the softmax's log differs from the logits by rounding: a point may flip, never more than one in 20
    assert (wrapped.correct != plain.correct).sum() <= (0 if convention != "softmax" else 2), convention


@pytest.mark.parametrize("outputs,message", [
    (lambda z: {"scores": z}, "a dict's 'logits'"),
    (lambda z: "logits", "got str"),
    (lambda z: z[:, :, None], "shape"),
    (lambda z: z.argmax(1), "torch.int64"),
])
def test_outputs_without_class_scores_are_refused_in_one_line(outputs, message, trained_tiny, digits):
    with pytest.raises(AttackError, match="must return class scores") as error:
        robustgan.evaluate(Outputs(trained_tiny, outputs), digits[2][:4], digits[3][:4], eps=0.1, **SMALL)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_outputs_that_carry_only_decisions_are_reported_as_upper_bounds(trained_tiny, digits, seed):
    """softmax(1000 z): probabilities that underflow to 0 on almost every point, so the margin
    is the same -87.3 everywhere and no attack of ours sees the boundary. The result says so,
    and its numbers print as upper bounds."""
    x, y = digits[2][:40], digits[3][:40]
    hard = Outputs(trained_tiny, lambda z: torch.softmax(1000 * z, 1))
    result = robustgan.evaluate(hard, x, y, eps=0.2, seed=seed, **SMALL)
    assert result.decisions_only > 0.8
    assert "UPPER BOUNDS" in repr(result) and "<= " in repr(result)
    logits = robustgan.evaluate(trained_tiny, x, y, eps=0.2, seed=seed, **SMALL)
    assert logits.decisions_only == 0 and "UPPER" not in repr(logits)


def test_eval_and_card_say_when_outputs_carry_only_decisions(tmp_path, monkeypatch, capsys, digits_runs):
    import json

    (tmp_path / "hard.py").write_text(
        "import torch\nfrom robustgan import models\n\n\nclass Hard(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.net = models.build('cw_cnn', 10, 1, image_size=28)\n\n"
        "    def forward(self, x):\n        return torch.softmax(1000 * self.net(x), 1)\n")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "net.safetensors"
    save_file({f"net.{k}": v for k, v in load_file(digits_runs / "pgd" / "model.safetensors").items()}, weights)
    model = ["--model", f"{tmp_path / 'hard.py'}:Hard", "--weights", weights, "--dataset", "digits",
             "--results", tmp_path / "runs", "--eps", "0.2", "--limit", "16", "--steps", "3", "--targets", "1",
             "--queries", "10"]
    done = run_main(["eval", *model, "--json"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decisions_only"] > 0.5 and "UPPER BOUNDS" in done.stderr
    done = run_main(["card", *model], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    card = next((tmp_path / "runs").rglob("model_card.md")).read_text()
    assert "UPPER BOUNDS" in card


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_float16_and_float64_images_and_models(dtype, trained_tiny, digits, seed):
    x, y = digits[2][:24], digits[3][:24]
    reference = robustgan.evaluate(trained_tiny, x, y, eps=0.1, seed=seed, **SMALL)
    same_model = robustgan.evaluate(trained_tiny, x.to(dtype), y, eps=0.1, seed=seed, **SMALL)
    assert same_model.clean > 0.8 and len(same_model.correct) == 24
    if dtype == torch.float64:  # float32 pixels hold every float64 digit exactly: the same numbers
        assert torch.equal(same_model.correct, reference.correct)
        model = Outputs(trained_tiny, lambda z: z)
        model.model = torch.nn.Sequential(*[m for m in trained_tiny]).double()
        on_double = robustgan.evaluate(model, x.double(), y, eps=0.1, seed=seed, **SMALL)
        assert on_double.clean == reference.clean


@pytest.mark.parametrize("eps", [np.float32(0.1), np.float64(0.1), torch.tensor(0.1), "0.1", [np.float32(0.1)],
                                 torch.tensor([0.1]), np.array([0.1])])
def test_eps_as_numpy_tensor_or_string(eps, trained_tiny, digits):
    result = robustgan.evaluate(trained_tiny, digits[2][:8], digits[3][:8], eps=eps, **SMALL)
    assert result.eps == [pytest.approx(0.1)]


def test_eps_as_a_fraction_and_bad_eps(trained_tiny, digits):
    x, y = digits[2][:8], digits[3][:8]
    assert robustgan.evaluate(trained_tiny, x, y, eps="8/255", **SMALL).eps == [pytest.approx(8 / 255)]
    for bad in ("eight", None, [0.1, 0.1], 2.0, "1/0"):
        with pytest.raises(AttackError, match="eps"):
            robustgan.evaluate(trained_tiny, x, y, eps=bad, **SMALL)


def test_labels_outside_the_head_are_refused_in_one_line(trained_tiny, digits):
    x, y = digits[2][:8], digits[3][:8].clone()
    y[3] = 10
    with pytest.raises(AttackError, match=r"labels must be class indices in 0\.\.9 \(the model has 10 outputs\)"):
        robustgan.evaluate(trained_tiny, x, y, eps=0.1, **SMALL)


@pytest.fixture(params=[2, 3])
def few_classes(request, digits):
    """A tiny CNN trained on the digits of classes 0..k-1 (k = 2 or 3) and their test images."""
    from tests.helpers import tiny_cnn, train_erm

    k = request.param
    x, y, xt, yt = digits
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=k)
    keep = y < k
    train_erm(model, x[keep][:200], y[keep][:200])
    test = yt < k
    return model.eval(), xt[test][:24], yt[test][:24]


def test_two_and_three_class_heads_in_every_attack(few_classes, seed):
    """Every attack runs on a 2- or 3-class model (APGD-T left out below 4 classes) and fools
    most points of this undefended model at eps 0.3; a randomized 2- or 3-class model gets EOT
    with the cross-entropy (DLR needs 3 classes)."""
    model, x, y = few_classes
    classes = model[-1].out_features
    for name in robustgan.attacks.attack_names():
        if name == "autoattack" or (name in ("apgd-dlr", "pgd-dlr") and classes < 3):
            continue  # each refuses in one line (the tests below)
        norm = robustgan.attacks.ATTACKS[name].norms[0]  # fab: L2 only, at a radius as large (0.3 x 28)
        eps = 0.3 if norm == "linf" else 0.3 * 28
        result = robustgan.evaluate(model, x, y, eps=eps, attack=name, seed=seed, norm=norm, **SMALL)
        assert result.clean > 0.9 and result.accuracy[eps] <= result.clean, name
        if name not in ("fgsm", "square", "rays"):  # one step, or too few queries, may leave more
            assert result.accuracy[eps] < 0.5, (name, result)
    noisy = Outputs(model, lambda z: z + 0.5 * torch.randn_like(z))
    result = robustgan.evaluate(noisy, x, y, eps=0.3, seed=seed, steps=3)
    assert result.attack == "eot" and result.accuracy[0.3] < 0.5


def test_attacks_that_need_more_classes_refuse_in_one_line(few_classes):
    model, x, y = few_classes
    classes = model[-1].out_features
    if classes < 3:
        for name in ("apgd-dlr", "pgd-dlr"):
            with pytest.raises(AttackError, match="at least 3 classes"):
                robustgan.evaluate(model, x, y, eps=0.3, attack=name, **SMALL)
    pytest.importorskip("torchattacks")
    with pytest.raises(AttackError, match="at least 4 classes"):
        robustgan.evaluate(model, x, y, eps=0.3, attack="autoattack")


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


def test_square_honours_queries(trained_tiny, digits, seed):
    x, y = digits[2][:10], digits[3][:10]
    counted = Counting(trained_tiny)
    robustgan.evaluate(counted, x, y, eps=0.05, attack="square", queries=100, seed=seed)
    # 100 queries per point, plus the clean pass, the initial stripes and the scoring passes
    assert 10 * 50 < counted.rows <= 10 * (100 + 10), counted.rows


@pytest.mark.parametrize("kwargs", [dict(targets=-1), dict(steps=0), dict(attack="nope"), dict(eps=[]),
                                    dict(eps=1.5), dict(restarts=0)])
def test_errors_from_python_speak_python(kwargs, trained_tiny, digits):
    """An error raised by the Python API names Python arguments, never a command-line flag."""
    call = dict(eps=0.1, steps=2, queries=5) | kwargs
    if "restarts" in kwargs:  # the ensemble takes no restarts from evaluate: the engine's own check
        with pytest.raises(AttackError) as error:
            robustgan.attacks.worst_case(trained_tiny, digits[2][:4], digits[3][:4], [0.1],
                                         AttackSettings(steps=2, restarts=0))
    else:
        with pytest.raises(AttackError) as error:
            robustgan.evaluate(trained_tiny, digits[2][:4], digits[3][:4], **call)
    assert "--" not in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.statistical
def test_the_decision_stage_attacks_what_only_decisions_show(model_kind, seed):
    """softmax(1000 z): APGD and Square have no margin to follow, RayS needs none. Measured at
    eps 0.2 on 60 points (10 steps): the gradient attacks alone leave 90 / 95% (tiny / BatchNorm
    kinds), with Square and RayS at 300 queries 52 / 58%; every example reported lies in the
    ball and the box and fools the model."""
    from robustgan.attacks import AttackSettings, worst_case
    from robustgan.evaluation.paired import paired

    model, _, xt, yt = model_kind
    x, y = xt[:60], yt[:60]
    hard = Outputs(model, lambda z: torch.softmax(1000 * z, 1))
    without = worst_case(hard, x, y, [0.2], AttackSettings(steps=10, targets=1, seed=seed, queries=0))
    found = worst_case(hard, x, y, [0.2], AttackSettings(steps=10, targets=1, seed=seed, queries=300), keep_examples=True)
    assert found.attacks[-1] == "rays(300)" and found.decisions_only.float().mean() > 0.8
    assert paired(without.correct[:, 0], found.correct[:, 0]).excess(0.15)
    examples = found.examples[0]
    assert (examples - x).abs().max() <= 0.2 + 1e-6 and examples.min() >= 0 and examples.max() <= 1
    fooled = found.clean & ~found.correct[:, 0]
    with torch.no_grad():  # (the model may be float64: tests/stress.py --margins)
        assert (model(examples[fooled].to(next(model.parameters()).dtype)).argmax(1) != y[fooled]).all()


def test_queries_reach_square_from_the_command_line(tmp_path, monkeypatch, capsys, digits_runs):
    """`eval --attack square --queries 100` runs 100 queries per point (Square's steps are its
    queries), as `robustgan.evaluate(..., attack="square", queries=100)` does."""
    import json

    from tests.helpers import copy_run

    run = copy_run(digits_runs / "pgd", tmp_path / "run")
    done = run_main(["eval", run, "--attack", "square", "--queries", "100", "--eps", "0.1", "--limit", "8",
                     "--no-protocol", "--json"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 100
