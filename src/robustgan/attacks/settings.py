"""What an attack is asked to do, as one value (``AttackSettings``), and where it runs
(``Batching``). The CLI and the notebook API build the settings once; from them alone come the
defaults (``resolved``), the evaluation cache's key (``key``), the label and what one batch's run
function gets (``args``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from robustgan.attacks.registry import (ATTACKS, DEFAULT_ATTACK, DEFAULT_TARGETS, QUERIES_PER_STEP, AttackArgs,
                                        AttackSpec, attack_label, default_step_size, get_attack)
from robustgan.attacks.threat import DEFAULT_NORM, AttackError, get_norm


@dataclass(frozen=True)
class AttackSettings:
    """One attack and every setting its numbers depend on, besides eps and the points.

    ``name`` is a registered attack (``attack_names()``) or "none" (clean accuracy). ``steps``
    None is the attack's default; an attack whose steps are queries (Square, RayS) takes
    ``queries`` as its steps when given. ``step_size`` None is ``default_step_size(eps, steps)``.
    ``targets`` and ``queries`` are the ensemble's APGD-T targets and query budget per point
    (None: ``QUERIES_PER_STEP`` x steps; 0: no query stage). ``seed`` draws the random starts per
    point (None: torch's global generator). ``norm`` is the threat model, "linf" or "l2"
    (``threat.NORMS``); an attack defined only in L-inf refuses "l2" (``check``)."""

    name: str = DEFAULT_ATTACK
    steps: int | None = None
    step_size: float | None = None
    restarts: int = 1
    targets: int = DEFAULT_TARGETS
    queries: int | None = None
    seed: int | None = 0
    norm: str = DEFAULT_NORM

    def check(self) -> AttackSettings:
        """These settings, refused in one line where they cannot run: an unknown norm, or an
        attack that has no version in this norm (``AttackSpec.norms``)."""
        get_norm(self.norm)
        if self.spec is not None and self.norm not in self.spec.norms:
            raise AttackError(f"{self.name} is defined in {' and '.join(get_norm(n).title for n in self.spec.norms)} "
                              f"only, not in {get_norm(self.norm).title}; the attacks in {get_norm(self.norm).title}: "
                              f"{', '.join(attacks_in(self.norm))}")
        return self

    @property
    def spec(self) -> AttackSpec | None:
        """The registry entry (an AttackError naming every choice for an unknown name); None for "none"."""
        return None if self.name == "none" else get_attack(self.name)

    def attack_at(self, eps: float) -> AttackSpec | None:
        """The attack that runs at ``eps``: None for clean accuracy (the name "none", or eps 0)."""
        return None if eps == 0 else self.spec

    def resolved(self) -> AttackSettings:
        """The same settings with the defaults filled in: the steps (or, for Square and RayS, the
        queries as steps) and the query budget."""
        if self.spec is None:
            return self
        steps, queries = self.spec.budget(self.steps, self.queries)
        if queries is None and steps and not self.spec.queries_only:
            queries = QUERIES_PER_STEP * steps
        return replace(self, steps=steps, queries=queries)

    def key(self, eps: float, n: int) -> dict:
        """The evaluation cache's settings for ``n`` points at ``eps``: (attack, eps, n, seed) and
        those the attack's registry entry says change its numbers (``AttackSpec.key``)."""
        if self.attack_at(eps) is None:
            return dict(attack="none", eps=0.0, n=n)
        full = self.resolved()
        values = dict(steps=full.steps, restarts=full.restarts, targets=full.targets, queries=full.queries,
                      step_size=full.step_size or (default_step_size(eps, full.steps) if full.steps else None))
        key = dict(attack=self.name, eps=float(eps), n=n, seed=self.seed) | {k: values[k] for k in self.spec.key}
        return key | ({} if self.norm == DEFAULT_NORM else {"norm": self.norm})  # L-inf keys as they always were

    @property
    def label(self) -> str:
        """e.g. "PGD-40, 5 restarts" or "worst case of APGD-CE + APGD-T (9 targets) + ..."."""
        return "clean" if self.spec is None else attack_label(self.key(1.0, 0))

    def args(self, *, num_classes: int, ids: torch.Tensor | None) -> AttackArgs:
        """What one batch's run function gets, its inputs checked once for the whole set already
        (by keyword: a field added to AttackArgs shifts nothing)."""
        full = self.resolved()
        return AttackArgs(steps=full.steps, step_size=full.step_size, restarts=full.restarts, targets=full.targets,
                          num_classes=num_classes, seed=full.seed, ids=ids, check=False, queries=full.queries,
                          norm=full.norm)


def attacks_in(norm: str) -> list[str]:
    """The registered attacks that run in ``norm``."""
    return [name for name, spec in ATTACKS.items() if norm in spec.norms]


@dataclass(frozen=True)
class Batching:
    """Where an attack runs and in what batches: ``device`` (None: the model's), ``batch_size``
    points per pass, ``advance(k)`` called as k points (or point-eps pairs) are done, and
    ``channels_last`` (the model converted in place and the batches in that memory format:
    faster convolutions, the same numbers up to float rounding)."""

    device: torch.device | str | None = None
    batch_size: int = 256
    advance: Callable[[int], None] | None = None
    channels_last: bool = False

    def done(self, k: int) -> None:
        if self.advance is not None:
            self.advance(k)
