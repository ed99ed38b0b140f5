"""The attack registry (as models and methods have theirs): one ``@register_attack`` entry per
attack names it, its default steps, the settings its numbers depend on (the evaluation cache
key), its label, and how it runs on one batch. The CLI's ``--attack`` choices, cache keys,
labels and defaults all come from here; an incomplete entry fails at import.

    @register_attack("pgd", steps=40, key=("steps", "step_size", "restarts"), help="PGD on the CE")
    def _pgd(model, x, y, eps, args: AttackArgs) -> torch.Tensor:  # x (N, C, H, W) in [0, 1]
        ...

A run function returns adversarial images in the eps-ball and [0, 1], leaves the model's
mode and parameters' gradients as it found them (``threat.attack_mode``), and draws its
random starts from ``args.seed`` per point (``args.ids``) when it has any."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from robustgan.attacks.threat import AttackError

DEFAULT_ATTACK = "ensemble"  # the number robustgan prints by default: the strongest it has
DEFAULT_TARGETS = 9  # the ensemble's APGD-T towards up to 9 classes, as AutoAttack's APGD-T
# Part of every evaluation cache key: an attack whose numbers change registers a version above
# every one used before, so its old results are recomputed and every other attack's are kept.
ATTACK_VERSION = 6
# Settings an attack's numbers may depend on, besides (attack, eps, n, seed) which every key holds
KEY_SETTINGS = ("steps", "step_size", "restarts", "targets", "queries")
QUERIES_PER_STEP = 50  # the default gradient-free budget per point: AutoAttack's 5000 Square queries at 100 steps


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al. 2018); 0.01 for the unbounded attack. The one default
    step size of every PGD, in evaluation and in training (``methods.base``)."""
    return 0.01 if math.isinf(eps) else max(2.5 * eps / steps, 1e-6)


@dataclass(frozen=True)
class AttackArgs:
    """What one batch's attack gets besides (model, x, y, eps)."""

    steps: int | None = None
    step_size: float | None = None  # None: default_step_size(eps, steps)
    restarts: int = 1
    targets: int = DEFAULT_TARGETS
    num_classes: int = 10
    seed: int | None = None  # None: torch's global generator
    ids: torch.Tensor | None = None  # the batch's indices in the test set (per-point random starts)
    check: bool = True  # validate the inputs (one host sync)
    queries: int | None = None  # the ensemble's gradient-free budget per point (None: 50 x steps; 0: none)
    norm: str = "linf"  # the threat model (``threat.NORMS``)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    run: Callable  # (model, x, y, eps, AttackArgs) -> x_adv
    steps: int | None  # the default number of steps; None: the attack has none
    key: tuple[str, ...]  # of KEY_SETTINGS: the settings that change its numbers
    help: str  # one line for --help and the docs' table
    label: Callable[[dict], str]  # cache settings -> e.g. "PGD-40, 5 restarts"
    # An attack that batches a whole set itself: (model, source, x, y, eps, AttackArgs, Batching)
    # -> which points of x (on the device) stay correct on ``model`` (bool (n,), CPU), the
    # examples made on ``source``
    mask: Callable | None = None
    version: int = ATTACK_VERSION
    queries_only: bool = False  # a gradient-free attack whose steps are its queries per point
    norms: tuple[str, ...] = ("linf",)  # the threat models it has a version in (L2 is opt-in)

    def budget(self, steps: int | None, queries: int | None) -> tuple[int | None, int | None]:
        """(steps, queries) this attack runs with: ``steps`` None is its default; an attack whose
        steps are queries (``queries_only``) takes ``queries`` as its steps when given."""
        if self.queries_only and queries is not None:
            return int(queries), None
        return (self.steps if steps is None else steps), queries


ATTACKS: dict[str, AttackSpec] = {}


def _plain_label(settings: dict) -> str:
    """e.g. "PGD-40, 5 restarts" from the cache settings; "FGSM" for an attack without steps."""
    name = settings["attack"].upper()
    if settings.get("steps") is None:
        return name
    restarts = settings.get("restarts", 1)
    return f"{name}-{settings['steps']}" + (f", {restarts} restarts" if restarts > 1 else "")


def register_attack(name: str, *, steps: int | None = None, key: tuple[str, ...] = (), help: str,
                    label: Callable[[dict], str] | None = None, mask: Callable | None = None,
                    version: int = ATTACK_VERSION, queries_only: bool = False,
                    norms: tuple[str, ...] = ("linf",)):
    """Register ``run(model, x, y, eps, args: AttackArgs) -> x_adv`` under ``name`` (``mask``:
    the whole-set path of an attack that batches itself, ``AttackSpec.mask``; ``queries_only``: its
    steps are queries, which a ``queries`` setting gives; ``norms``: the threat models it has a
    version in, L-inf unless it says more: an attack that reads ``args.norm`` lists "l2"). Fails at
    once on a name taken, a key setting we do not know, an attack with steps whose key omits
    them (``--steps 10`` and ``--steps 100`` would share a cache entry), or no help line."""
    def register(run):
        problems = [f"{name!r} is registered already"] if name in ATTACKS or name == "none" else []
        problems += [f"unknown key setting {k!r} (known: {', '.join(KEY_SETTINGS)})" for k in key if k not in KEY_SETTINGS]
        if steps is not None and (int(steps) <= 0 or "steps" not in key):
            problems.append("an attack with steps needs a positive default and 'steps' in its key")
        if not help.strip():
            problems.append("no help line")
        if problems:
            raise AttackError(f"attack {name!r} cannot be registered: {'; '.join(problems)}")
        ATTACKS[name] = AttackSpec(name, run, steps, tuple(key), help.strip(), label or _plain_label, mask, version,
                                   queries_only, tuple(norms))
        return run
    return register


def get_attack(name: str) -> AttackSpec:
    """The registered attack ``name``; an AttackError naming every choice otherwise."""
    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; choose one of none, {', '.join(attack_names())}")
    return ATTACKS[name]


def attack_names() -> tuple[str, ...]:
    """Every registered attack, the default first."""
    return tuple(sorted(ATTACKS, key=lambda name: (name != DEFAULT_ATTACK, name)))


def attack_table() -> str:
    """The registered attacks as a markdown table (docs/evaluation.md holds it; a test keeps the
    two equal): name, default steps, the settings its numbers depend on, its help line."""
    rows = ["| `--attack` | default `--steps` | its numbers depend on | `--norm` | what it runs |",
            "| --- | --- | --- | --- | --- |"]
    for name in attack_names():
        spec = ATTACKS[name]
        depends = ", ".join(["eps", "n", "seed", *spec.key, "norm"])
        norms = ", ".join(spec.norms)
        rows.append(f"| `{name}` | {spec.steps if spec.steps else '-'} | {depends} | {norms} | {spec.help} |")
    return "\n".join(rows) + "\n"


def attack_label(settings: dict) -> str:
    """The label of a cached result's settings, e.g. "worst case of APGD-CE + APGD-T (9
    targets), 100 steps" or "PGD-40, 5 restarts"; ", L2" added in the L2 threat model."""
    label = ATTACKS[settings["attack"]].label(settings) if settings["attack"] in ATTACKS else settings["attack"].upper()
    return label + (", L2" if settings.get("norm") == "l2" else "")
