"""An evaluation never changes the model it is handed: every module's ``training`` flag, every
parameter and every buffer (BatchNorm's running statistics and ``num_batches_tracked``) are
bitwise what they were, after every attack of the registry, the notebook API, the engine's
functions and the evaluation commands. Shown on a model with Dropout and BatchNorm, handed
over in eval mode and in train mode, with logits and with probability outputs (which the
ensemble attacks through a wrapper of its own: a new module, in training mode, whose mode
must not reach the user's model)."""

from __future__ import annotations

import pytest
import torch

import robustgan
from robustgan.attacks import ATTACKS, AttackSettings, Savings, attack_names, robust_mask, worst_case
from robustgan.attacks.ensemble import refine_min_eps
from robustgan.attacks.outputs import decisions_only_fraction
from robustgan.evaluation.checks import CheckSettings, check_model
from robustgan.evaluation.engine import randomness
from robustgan.evaluation.saliency import saliency
from robustgan.evaluation.trends import directions, logit_trends
from tests.helpers import bn_dropout_cnn, run_main, tiny_cnn


class Softmax(torch.nn.Module):
    """Probability outputs, as a user writes it: a new module, so in training mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), 1)


def state(model) -> tuple[dict, dict]:
    """(every parameter and buffer, cloned; every module's training flag)."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {name: module.training for name, module in model.named_modules()})


def assert_unchanged(before, model):
    tensors, modes = before
    now_tensors, now_modes = state(model)
    assert now_modes == modes, {k for k in modes if now_modes[k] != modes[k]}
    assert {k for k, v in now_tensors.items() if not torch.equal(tensors[k], v)} == set()
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(params=["eval-logits", "train-logits", "eval-softmax", "train-softmax"])
def handed(request, digits_rgb):
    """A bn_dropout_cnn with non-trivial running statistics (two training passes), handed over
    in eval or train mode, with logits or behind a softmax; a few 3-channel test digits."""
    torch.manual_seed(0)
    net = bn_dropout_cnn()
    with torch.no_grad():
        net.train()(digits_rgb[0][:64])
        net(digits_rgb[0][64:128])
    mode, outputs = request.param.split("-")
    model = Softmax(net) if outputs == "softmax" else net
    model.train(mode == "train")
    return model, digits_rgb[2][:6], digits_rgb[3][:6]


@pytest.mark.parametrize("name", attack_names())
def test_every_attack_hands_the_model_back_unchanged(name, handed):
    if name == "autoattack":
        pytest.importorskip("torchattacks")
    model, x, y = handed
    before = state(model)
    steps = 2 if ATTACKS[name].steps else None
    norm = ATTACKS[name].norms[0]  # an attack defined in L2 only (fab) runs there
    mask = robust_mask(model, x, y, 0.1, AttackSettings(name, steps=steps, targets=2, queries=5, norm=norm))
    assert mask.shape == (len(y),)
    assert_unchanged(before, model)


def test_the_engine_and_the_notebook_api_hand_the_model_back_unchanged(handed):
    model, x, y = handed
    before = state(model)
    found = worst_case(model, x, y, [0.05, 0.1], AttackSettings(steps=3, targets=2, queries=5))
    in_l2 = worst_case(model, x, y, [0.05, 0.1], AttackSettings(steps=3, targets=2, queries=5, norm="l2"),
                       savings=Savings(fab_close=1))  # every robust point through the FAB-T stage too
    assert in_l2.by_stage["fab"] > 0
    refine_min_eps(model, x, y, found, AttackSettings(steps=2, targets=1), rounds=1)
    robustgan.evaluate(model, x, y, eps=0.1, steps=2, targets=1, queries=5)
    robustgan.evaluate(model, x, y, eps=0.1, attack="eot", steps=2)
    randomness(model, x, "cpu")
    decisions_only_fraction(model, x)
    saliency(model, x, y)
    logit_trends(model, x[:1], y[:1], directions(model, x[:1], y[:1], 0.1, None), 0.1, points=5)
    check_model(model, (x * 255).round().to(torch.uint8), y,
                CheckSettings(eps=0.1, steps=2, long_steps=3, restarts=2, ensemble_steps=2, targets=1, queries=5,
                              unbounded_steps=2, autoattack=False), surrogate=tiny_cnn(in_channels=3))
    assert_unchanged(before, model)


FACTORY = '''
import torch
from tests.helpers import bn_dropout_cnn


class Softmax(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = bn_dropout_cnn(in_channels=1)

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


def softmax_bn():
    return Softmax()
'''


def test_every_evaluation_command_hands_the_model_back_unchanged(tmp_path, monkeypatch, capsys):
    """eval, card, check, curve, saliency, report and trends on an external model with
    BatchNorm, Dropout and probability outputs: each model object a command loads is, when the
    command ends, what it was when loaded."""
    from safetensors.torch import save_file

    import robustgan.runtime

    torch.manual_seed(0)
    net = bn_dropout_cnn(in_channels=1)
    x, _ = robustgan.data.load("digits", split="train")
    with torch.no_grad():
        net.train()(x[:64].float() / 255)
    save_file({f"net.{k}": v for k, v in net.state_dict().items()}, tmp_path / "bn.safetensors")
    (tmp_path / "bn_factory.py").write_text(FACTORY)
    loaded = []
    load_model = robustgan.runtime.load_model

    def recording(run_dir):
        model = load_model(run_dir)
        loaded.append((model, state(model)))
        return model

    monkeypatch.setattr(robustgan.runtime, "load_model", recording)
    model = ["--model", f"{tmp_path / 'bn_factory.py'}:softmax_bn", "--weights", tmp_path / "bn.safetensors",
             "--dataset", "digits", "--results", tmp_path / "runs"]
    small = ["--limit", "8", "--steps", "2", "--targets", "1", "--queries", "5"]
    commands = [["eval", *model, "--eps", "0.1", *small], ["card", *model, "--eps", "0.1", *small],
                ["check", *model, "--eps", "0.1", "--limit", "8", "--steps", "2", "--long-steps", "3",
                 "--restarts", "2", "--ensemble-steps", "2", "--targets", "1", "--queries", "5", "--no-autoattack"]]
    commands += [["curve", *model, "--eps", "0.1", *small, "--out", tmp_path / "curves"],
                 ["saliency", *model, "--eps", "0.1", "--index", "0", "--steps", "2", "--out", tmp_path / "saliency"]]
    for command in commands:
        done = run_main(command, monkeypatch, capsys)
        assert done.returncode in (0, 1), (command[0], done.stderr)
    run = tmp_path / "runs"  # --results: the model's run directory, which report and trends take
    for command in (["report", run, "--eps", "0.1", "--limit", "8", "--steps", "2", "--targets", "1", "--queries", "5",
                     "--no-check", "--out", tmp_path / "report.html"],
                    ["trends", run, "--index", "0", "--eps-max", "0.1", "--out", tmp_path / "trends"]):
        done = run_main(command, monkeypatch, capsys)
        assert done.returncode == 0, (command[0], done.stderr)
        commands.append(command)
    assert len(loaded) >= len(commands)
    for model, before in loaded:
        assert_unchanged(before, model)
