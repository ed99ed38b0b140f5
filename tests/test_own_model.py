"""Bring your own model: a factory module and safetensors weights written here are evaluated
through the CLI like a run, cached per (factory, weights), refused as a pickle, and carded."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from robustgan.evaluation.card import SCHEMA
from tests.helpers import assert_one_line, copy_run, run_main

FACTORIES = '''
import torch
import torch.nn as nn
from robustgan import models


def cw_cnn():
    """The C&W CNN of the digits presets, as a user would build it."""
    return models.build("cw_cnn", 10, 1, image_size=28)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = cw_cnn()

    def forward(self, x):
        return self.net(x) * 1e4


def scaled():
    """The same network with its logits times 1e4: the same weights (state dict under net.)."""
    return Scaled()


class Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = cw_cnn()

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


def softmax():
    """The same network (its dense block has Dropout(0.5)) with probability outputs."""
    return Softmax()


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = cw_cnn()

    def forward(self, x):
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def noisy():
    """The same network behind Gaussian noise at test time: a randomized model."""
    return Noisy()
'''
# a small gradient-free stage: these tests are about where results come from, not their strength
EVAL_SETTINGS = ["--eps", "0.1,0.2", "--steps", "10", "--limit", "24", "--targets", "1", "--queries", "50"]
EVAL = [*EVAL_SETTINGS, "--json"]  # equalities: exact at any n


@pytest.fixture
def own_model(digits_runs, tmp_path):
    """(factory file, weights of the digits PGD-AT run, weights with keys under net.)."""
    from safetensors.torch import load_file, save_file

    (tmp_path / "mynets.py").write_text(FACTORIES)
    weights = tmp_path / "pgd.safetensors"
    shutil.copy(digits_runs / "pgd" / "model.safetensors", weights)
    state = load_file(weights)
    save_file({f"net.{k}": v for k, v in state.items()}, tmp_path / "pgd-net.safetensors")
    return tmp_path / "mynets.py", weights, tmp_path / "pgd-net.safetensors"


def test_a_randomized_model_is_evaluated_with_eot_by_default(own_model, monkeypatch, capsys):
    factory, _, net_weights = own_model
    done = run_main(["eval", "--model", f"{factory}:noisy", "--weights", net_weights, "--dataset", "digits", "--eps", "0.2",
                     "--steps", "5", "--limit", "16", "--no-protocol", "--json"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["attack"] == "eot" and result["attacks"] == ["eot"] and result["steps"] == 5


def test_own_model_gives_the_run_directorys_numbers(own_model, digits_runs, tmp_path, monkeypatch, capsys):
    """The run's network as a factory gives the run's numbers; behind a softmax (the C&W CNN has
    Dropout in its dense block, which must stay off while the probabilities' log is attacked)
    it gives them too, up to a point flipped by rounding."""
    factory, weights, net_weights = own_model
    run = tmp_path / "pgd-copy"
    copy_run(digits_runs / "pgd", run)
    ours = run_main(["eval", run, *EVAL], monkeypatch, capsys)
    theirs = run_main(["eval", "--model", f"{factory}:cw_cnn", "--weights", weights, "--dataset", "digits", *EVAL],
                      monkeypatch, capsys)
    assert ours.returncode == theirs.returncode == 0, theirs.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert (a["clean"], a["results"]) == (b["clean"], b["results"])
    assert (weights.parent / "pgd.mynets_py_cw_cnn.robustgan" / "eval_cache.json").is_file()  # next to the weights
    done = run_main(["eval", "--model", f"{factory}:softmax", "--weights", net_weights, "--dataset", "digits", *EVAL],
                    monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    probabilities = json.loads(done.stdout)
    assert probabilities["decisions_only"] == 0 and probabilities["clean"] == a["clean"]
    for logits, probs in zip(a["results"], probabilities["results"]):  # 24 points: one may flip on rounding
        assert abs(logits["accuracy"] - probs["accuracy"]) <= 1 / 24 + 1e-9, (logits, probs)


def test_two_factories_over_the_same_weights_never_share_results(own_model, tmp_path, monkeypatch, capsys):
    factory, _, net_weights = own_model
    shared = tmp_path / "results"
    first = run_main(["eval", "--model", f"{factory}:scaled", "--weights", net_weights, "--dataset", "digits",
                      "--attack", "pgd", "--results", shared, *EVAL], monkeypatch, capsys)
    assert first.returncode == 0, first.stderr
    other = ["eval", "--model", f"{factory}:cw_cnn", "--weights", net_weights, "--dataset", "digits",
             "--results", shared, *EVAL]
    assert_one_line(run_main(other, monkeypatch, capsys), "holds another model's results")
    from robustgan.runtime import model_identity
    from robustgan.runs import RunDir
    assert f"+{factory}:scaled@" in model_identity(shared)
    assert RunDir(shared).config().method.factory == f"{factory}:scaled"


def test_an_edited_factory_or_a_new_data_root_keeps_results_apart(own_model, monkeypatch, capsys):
    """The cache identity holds the factory file's hash; --data-root updates the record."""
    from robustgan.runs import RunDir
    from robustgan.runtime import model_identity

    factory, weights, _ = own_model
    args = ["eval", "--model", f"{factory}:cw_cnn", "--weights", weights, "--dataset", "digits", *EVAL, "--no-protocol"]
    assert run_main(args, monkeypatch, capsys).returncode == 0
    results = weights.parent / "pgd.mynets_py_cw_cnn.robustgan"
    before = model_identity(results)
    factory.write_text(factory.read_text() + "\n# edited\n")
    assert model_identity(results) != before  # an edited factory: cached results no longer apply
    done = run_main([*args, "--data-root", weights.parent], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert RunDir(results).config().data.root == str(weights.parent.resolve())
    done = run_main(["eval", results, "--model", f"{factory}:cw_cnn"], monkeypatch, capsys)
    assert_one_line(done, "give a run directory or --model, not both")


def test_pickled_weights_are_refused_with_how_to_convert(own_model, tmp_path, monkeypatch, capsys):
    factory, weights, _ = own_model
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not even read")
    done = run_main(["eval", "--model", f"{factory}:cw_cnn", "--weights", pt, "--dataset", "digits", "--eps", "0.1"],
                    monkeypatch, capsys)
    assert_one_line(done, "pickled weights are never loaded")
    assert "safetensors.torch import save_file" in done.stderr
    assert_one_line(run_main(["eval", "--weights", weights], monkeypatch, capsys), "go with --model")
    assert_one_line(run_main(["eval", "--model", f"{factory}:nope", "--weights", weights, "--dataset", "digits",
                              "--eps", "0.1"], monkeypatch, capsys), "has no callable 'nope'")


def test_model_card_equals_eval_and_validates_against_the_schema(own_model, tmp_path, monkeypatch, capsys):
    factory, weights, _ = own_model
    model = ["--model", f"{factory}:cw_cnn", "--weights", weights, "--dataset", "digits"]
    done = run_main(["card", *model, *EVAL_SETTINGS], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    results = weights.parent / "pgd.mynets_py_cw_cnn.robustgan"
    card = json.loads((results / "model_card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA.read_text()))
    shutil.rmtree(results)  # measured afresh by eval: the card's numbers are eval's, not a cached copy
    result = json.loads(run_main(["eval", *model, *EVAL], monkeypatch, capsys).stdout)
    assert card["clean_acc"] == round(100 * result["clean"], 2)
    assert [r["worst_case"] for r in card["robust_acc"]] == [round(100 * r["accuracy"], 2) for r in result["results"]]
    assert [r["protocol"] for r in card["robust_acc"]] == [round(100 * r["protocol_accuracy"], 2)
                                                           for r in result["results"]]
    assert card["evaluation"]["n"] == 24 and card["checks"]["status"] == "not run"
    assert card["splits"] == {"train": None, "test": 359, "evaluated": 24} and len(card["weights_sha256"]) == 64
    assert card["training"] is None and card["additional_data"] is None  # trained elsewhere: unknown here


def test_run_card_with_checks(digits_runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "pgd"
    copy_run(digits_runs / "pgd", run)
    done = run_main(["check", run, "--eps", "0.2", "--steps", "5", "--long-steps", "10", "--restarts", "2",
                     "--limit", "32", "--no-autoattack", "--targets", "1", "--ensemble-steps", "10", "--queries", "50"],
                    monkeypatch, capsys)
    assert done.returncode in (0, 1), done.stderr
    done = run_main(["card", run, "--eps", "0.1,0.2", "--steps", "10", "--limit", "32", "--targets", "1", "--queries",
                     "50"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    card = json.loads((run / "model_card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA.read_text()))
    assert card["checks"]["status"] in ("pass", "warn") and len(card["checks"]["checks"]) >= 10
    assert card["splits"]["train"] == 1438 and card["training"]["method"]["name"] == "pgd_at"
    text = (run / "model_card.md").read_text()
    assert "| 0.2 |" in text and "skipped" in text and card["weights_sha256"] in text
