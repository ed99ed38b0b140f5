"""The registries' contracts: every registered attack keeps the threat model and the model
alone, and its cache key holds exactly the settings that change its numbers; cache keys written
before the registry read the same; a toy attack and a toy method added here, through their
registries only, run end to end (ARCHITECTURE.md, "Where a change goes")."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from robustgan.attacks import (ATTACKS, AttackArgs, AttackError, AttackSettings, Batching, Stage, StageBatch, attack_label,
                               attack_names, attack_table, register_attack, robust_mask, stages, worst_case)
from robustgan.attacks.stages import Passes, stage_table
from robustgan.evaluation.cache import EvalCache, cache_key
from robustgan.evaluation.engine import Subject, cached_mask
from tests.helpers import CONFIGS, copy_run, run_main, tiny_cnn

BUILT_IN = ("ensemble", "apgd-ce", "apgd-dlr", "autoattack", "fgsm", "pgd", "pgd-dlr", "pgd-unsaturated", "square", "eot",
            "rays")
# a value of each key setting other than its default
OTHER = {"steps": 7, "step_size": 0.123, "restarts": 3, "targets": 2, "queries": 77}


def settings_key(attack: str, eps: float, n: int, seed: int = 0, **settings) -> dict:
    """The cache settings of ``attack`` with ``settings`` (AttackSettings' fields) at eps for n points."""
    return AttackSettings(attack, seed=seed, **settings).key(eps, n)


@pytest.fixture
def toy_attack():
    """'toy': each pixel pushed to the edge of the ball along a fixed random sign pattern
    (per point, from the seed), registered for the test only."""
    @register_attack("toy", steps=3, key=("steps",), help="a fixed random corner of the ball")
    def toy(model, x, y, eps, args: AttackArgs):
        gen = torch.Generator().manual_seed(args.seed or 0)
        corner = x + eps * torch.randint(0, 2, x.shape, generator=gen).mul(2).sub(1).to(x)
        return corner.clamp(0, 1)

    yield "toy"
    del ATTACKS["toy"]


def test_every_builtin_attack_is_registered_and_the_default_comes_first():
    assert set(BUILT_IN) <= set(ATTACKS) and attack_names()[0] == "ensemble"


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_attack_keeps_the_ball_the_box_and_the_model(name):
    if name == "autoattack":
        pytest.importorskip("torchattacks")
    model = torch.nn.Sequential(tiny_cnn(), torch.nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,))
    spec = ATTACKS[name]
    x_adv = spec.run(model, x, y, 0.1, AttackArgs(steps=2 if spec.steps else None, targets=2, seed=0,
                                                  ids=torch.arange(3)))
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert spec.help and AttackSettings(name).label.strip()


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_cache_key_changes_with_every_setting_that_changes_the_numbers(name):
    spec = ATTACKS[name]
    base = cache_key(**settings_key(name, 0.1, 50, 0))
    for setting, value in OTHER.items():
        changed = cache_key(**settings_key(name, 0.1, 50, 0, **{setting: value}))
        # an attack whose steps are queries (Square) takes a queries setting as its steps
        assert (changed != base) == (setting in spec.key or (spec.queries_only and setting == "queries")), setting
    assert cache_key(**settings_key(name, 0.2, 50, 0)) != base and cache_key(**settings_key(name, 0.1, 50, 1)) != base
    if spec.steps:  # the default steps are the attack's own, written into the key
        assert base == cache_key(**settings_key(name, 0.1, 50, 0, steps=spec.steps))


def test_cache_keys_written_before_the_registry_read_the_same():
    """Keys made by the code before attacks were registered (ATTACK_VERSION 6, every attack and
    a spread of settings): the same strings, so every cached result keeps its numbers; only an
    attack whose numbers changed since (the ensemble's gradient-free stage) has a new version."""
    cases = json.loads((Path(__file__).parent / "data" / "cache_keys_attack_version_6.json").read_text())
    for case in cases:
        args = {k: (math.inf if v == "inf" else v) for k, v in case["args"].items()}
        version = ATTACKS[args["attack"]].version if args["attack"] in ATTACKS and args["eps"] != 0 else 6
        key = json.loads(cache_key(**settings_key(**args)))
        key.pop("queries", None)  # the ensemble's gradient-free budget, a setting since version 7
        assert key == json.loads(case["key"]) | {"version": version}, args
    assert {spec.version for name, spec in ATTACKS.items() if name != "ensemble"} == {6}


@pytest.mark.parametrize("entry,problem", [
    (dict(key=("bogus",)), "unknown key setting"),
    (dict(steps=10), "'steps' in its key"),
    (dict(help=" "), "no help line"),
])
def test_an_incomplete_attack_fails_at_registration(entry, problem):
    with pytest.raises(AttackError, match=problem):
        register_attack("incomplete", **({"help": "h"} | entry))(lambda *a: None)
    assert "incomplete" not in ATTACKS
    with pytest.raises(AttackError, match="registered already"):
        register_attack("pgd", help="again")(lambda *a: None)


def test_a_toy_attack_added_through_the_registry_runs_everywhere(toy_attack, digits_runs, tmp_path, monkeypatch, capsys,
                                                                 seed):
    """Registered in the fixture and nowhere else: robust_mask, the cache (its steps in the key),
    the label and `robustgan eval --attack toy` all take it."""
    model = tiny_cnn().eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    toy = AttackSettings(toy_attack, seed=seed)
    mask = robust_mask(model, x, y, 0.2, toy)
    assert mask.shape == (16,) and mask.dtype == torch.bool
    cache = EvalCache(path=tmp_path / "eval_cache.json", digest="w")
    assert torch.equal(cached_mask(Subject(model, x, y, cache), 0.2, toy, Batching()), mask)
    keys = [json.loads(k) for k in cache.entries]
    assert keys[0]["attack"] == "toy" and keys[0]["steps"] == 3
    assert attack_label({"attack": "toy", "steps": 5}) == "TOY-5"

    run = copy_run(digits_runs / "standard", tmp_path / "run")
    done = run_main(["eval", run, "--attack", "toy", "--eps", "0.1,0.3", "--limit", "24", "--json"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["attack"] == "toy" and [r["eps"] for r in result["results"]] == [0.1, 0.3]


@dataclass
class ToyConfig:
    name: str = "toy_method"
    eps: float = 0.25

    def validate(self):
        pass


def test_a_toy_method_added_through_the_registry_states_its_contract():
    """A method is a class in the registry: what evaluation reads of it (its training eps, its
    label, its gray-box model) comes from the class, not from its config's fields."""
    from robustgan.config import METHOD_CONFIGS
    from robustgan.methods import METHODS, Method, eps_train, register_method
    from robustgan.methods.standard import Standard

    @register_method
    class ToyMethod(Standard):
        Config = ToyConfig

        @classmethod
        def train_eps(cls, cfg):
            return cfg.method.eps

        @classmethod
        def label(cls, cfg):
            return "toy"

    try:
        from robustgan.config import load_config

        cfg = load_config(CONFIGS / "standard-digits.toml", ['method.name="toy_method"', "method.eps=0.25"])
        assert eps_train(cfg) == 0.25 and METHODS["toy_method"].label(cfg) == "toy"
        assert Method.graybox_model(torch.nn.Identity()) is None
        assert eps_train(load_config(CONFIGS / "standard-digits.toml")) == 0.0
    finally:
        del METHODS["toy_method"], METHOD_CONFIGS["toy_method"]


def test_method_and_dataset_registries_refuse_a_taken_name():
    """As the attack registry does: a second registration never silently replaces the first."""
    from robustgan.data.registry import DATASETS, register_dataset
    from robustgan.errors import ConfigError, DataError
    from robustgan.methods.base import METHODS, register_method

    pgd_at = METHODS["pgd_at"]
    with pytest.raises(ConfigError, match="registered already"):
        register_method(type("Again", (pgd_at,), {}))
    mismatched = type("Mismatched", (pgd_at,), {"name": "mismatched"})
    with pytest.raises(ConfigError, match="give its name once"):
        register_method(mismatched)
    assert METHODS["pgd_at"] is pgd_at and "mismatched" not in METHODS
    with pytest.raises(DataError, match="registered already"):
        register_dataset("digits")(lambda root, split: None)
    assert DATASETS["digits"].loader is not None


def test_the_docs_attack_table_is_the_registrys():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "evaluation.md").read_text()
    start = docs.index("| `--attack` |")
    end = docs.index("\n\n", start) + 1
    assert docs[start:end] == attack_table(), "docs/evaluation.md: paste robustgan.attacks.attack_table() as its table"


def test_the_docs_stage_table_is_the_ensembles():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "evaluation.md").read_text()
    start = docs.index("| stage | kind |")
    end = docs.index("\n\n", start) + 1
    assert docs[start:end] == stage_table(), "docs/evaluation.md: paste robustgan.attacks.stages.stage_table() there"


CORNERS = 8  # the toy stage's tries per point and eps


def corner_stage(batch: StageBatch) -> Passes:
    """A toy query stage: ``CORNERS`` random corners of the ball per point still robust at each
    eps (one forward pass each); where the model misclassifies one, the point is fooled there
    and at every larger eps (the corner lies in every larger ball)."""
    forwards = 0
    gen = torch.Generator().manual_seed(batch.seed)
    for k, eps in enumerate(batch.eps):
        for _ in range(CORNERS):
            todo = batch.correct[:, k].nonzero()[:, 0]
            if not len(todo) or eps == 0:
                break
            x = batch.x[todo.to(batch.x.device)]
            corner = (x + eps * torch.randint(0, 2, x.shape, generator=gen).mul(2).sub(1).to(x)).clamp(0, 1)
            with torch.no_grad():
                hit = (batch.model(corner).argmax(1) != batch.y[todo.to(batch.y.device)]).cpu()
            forwards += len(todo)
            batch.correct[todo[hit], k:] = False
            if batch.examples is not None:
                batch.examples[k:, todo[hit]] = corner[hit.to(corner.device)].cpu()
    return Passes(0, forwards)


def test_a_toy_stage_added_through_the_recipe_runs_in_the_ensemble(trained_tiny, digits, monkeypatch, seed):
    """ARCHITECTURE.md's recipe alone (a run function, a Stage in STAGES): the ensemble runs it
    after the gradient stages and Square, names it in ``attacks`` and its label, counts its
    forward passes, and every point it fools has an example in the ball that the model gets wrong."""
    toy = Stage("corner", "a random corner", "one random corner of the ball per still-robust point",
                lambda targets, queries, label_only: "corner", lambda settings: "a corner", run=corner_stage)
    *_, xt, yt = digits
    x, y = xt[:64], yt[:64]
    weak = AttackSettings(steps=1, targets=1, queries=1, seed=seed)  # weak stages before it: the toy finds points
    before = worst_case(trained_tiny, x, y, [0.1, 0.4], weak)
    monkeypatch.setattr(stages, "STAGES", [*stages.STAGES, toy])
    found = worst_case(trained_tiny, x, y, [0.1, 0.4], weak, keep_examples=True)
    assert found.attacks[-1] == "corner" and "a corner" in ATTACKS["ensemble"].label(weak.key(0.1, 64))
    assert (found.correct <= before.correct).all() and (found.correct < before.correct).any()  # it fooled points
    assert found.forwards > before.forwards
    for k, eps in enumerate(found.eps):
        example = found.examples[k]
        assert (example - x).abs().max() <= eps + 1e-6 and 0 <= example.min() and example.max() <= 1
        with torch.no_grad():
            assert torch.equal(trained_tiny(example).argmax(1) != y, ~found.correct[:, k])
    assert "corner" in stage_table() and "a random corner" in stages.ensemble_help()


EVALUATION_PATH = ["evaluation/*.py", "attacks/accuracy.py", "attacks/ensemble.py", "attacks/registry.py",
                   "attacks/settings.py", "attacks/stages.py"]


def test_no_function_of_the_evaluation_path_takes_more_than_ten_parameters():
    """Settings travel as one value (AttackSettings, Batching, EvalContext, a Subject), never as
    a dozen keywords threaded by hand (the attack algorithms keep their keyword options)."""
    import ast

    src = Path(__file__).resolve().parent.parent / "src" / "robustgan"
    long = []
    for pattern in EVALUATION_PATH:
        for path in sorted(src.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                    if count > 10:
                        long.append(f"{path.relative_to(src)}:{node.lineno} {node.name} ({count})")
    assert not long, long


def test_first_warm_starts_apgd_t_first_target_from_the_worst_example_under_the_give_up_rule():
    from robustgan.attacks.stages import GIVE_UP, Savings, attack_runs

    def first_target(savings):
        return next(run for run in attack_runs(9, 0, savings) if run.stage == "apgd-t")

    default, warm = first_target(Savings()), first_target(Savings(first_warm=True))
    assert (default.warm, default.give_up) == (False, ())
    assert (warm.warm, warm.give_up) == (True, GIVE_UP)
    assert warm.ranks == default.ranks == (1,)
