"""The worst-case ensemble's stages, declared in one place (``STAGES``): what each runs, in order,
on which points. ``ensemble_names`` (the ``attacks`` of every result), the ensemble's label, its
``--help`` line and docs/evaluation.md's stage table all come from this list.

Two kinds of stage:
- a gradient stage gives APGD runs (``AttackRun``) that ``worst_case`` makes at the eps of
  the grid from the largest down, on the points every earlier run left robust (``runs``);
- a batch stage runs once the gradient stages are done at every eps, on one batch
  (``StageBatch``), and returns the passes it spent (``run``, ``Passes``): FAB-T (gradients,
  L2 only), then the query stages Square and RayS (forwards only).

ARCHITECTURE.md's recipe "an attack in the default ensemble" adds one of either kind."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from robustgan.attacks.fab import GIVE_UP as FAB_GIVE_UP
from robustgan.attacks.fab import fab_stage
from robustgan.attacks.gradient_free import gradient_free_stage
from robustgan.attacks.rays import decision_stage
from robustgan.attacks.registry import QUERIES_PER_STEP

FIRST_TARGETS = 1  # APGD-T target ranks every still-robust point gets; higher ranks only close points
CLOSE = 0.3  # close to fooled: the worst example has closed 70% of the clean logit gap
CLOSE_RESTART = 0.5  # close enough for a second APGD-CE from a random start: half the gap closed
HALVING = (4, 2, 1)  # targets 2-9 kept per point after APGD's first three checkpoints (22, 41, 57 of 100 steps)
# APGD-CE from the worst example and targets 2-9 stop on a point whose margin ratio (best / clean
# margin) is still above these at their first four checkpoints (22, 41, 57, 70 of 100 steps);
# docs/evaluation.md, "Giving up on far points", says what rests on them and what they risk.
GIVE_UP = (0.5, 0.25, 0.12, 0.06)
# Part of the ensemble's cache key: a change to STAGES or to a stage's numbers raises it above
# every version used before (its reason in one line beside it).
ENSEMBLE_VERSION = 15  # Square's give-up checkpoints per norm, each about twice the measured need


class AttackRun(NamedTuple):
    stage: str  # the stage it belongs to (its cost is counted there)
    loss: str  # a key of losses.LOSSES
    ranks: tuple[int, ...]  # targets by rank at the worst example, attacked side by side (targeted loss only)
    seed: int  # target rank r draws its random starts from seed + 7919 r
    threshold: float | None  # only on points ``close_to_fooled`` at this threshold; None: every point
    warm: bool  # start from each point's worst example instead of a random point
    prune: tuple[int, ...] | None = None  # successive halving over a point's targets (``apgd_run``)
    give_up: tuple[float, ...] = ()  # per APGD checkpoint, the margin ratio above which a point stops (``apgd_run``)


@dataclass(frozen=True)
class Savings:
    """Where the ensemble spends less than attacking every point with everything (ensemble.py's
    docstring), each switchable off to measure what it saves: ``descend`` (the grid from the
    largest eps down, each point settled at its largest robust eps; False, or without
    ``early_stop``: upwards, every robust eps in full), ``warm_start`` (APGD-CE from the fooling example at the next larger eps, or
    upwards from the worst point at the previous eps; ``restart``: APGD-CE once more from a
    random start on points whose margin ratio is at most this, None: never),
    ``early_stop`` (a fooled point is not attacked again), ``close`` (ranks 2-9 only on points
    whose margin ratio is at most ``close``; 1: every point), ``halving`` (successive halving
    over those ranks), ``give_up`` (APGD-CE from the worst example, and targets 2-9, stop on a
    point whose margin ratio is still above ``give_up[j-1]`` at their j-th checkpoint; (): never;
    APGD-T's first target (unless ``first_warm``), APGD-CE's restart and APGD-CE without a warm start run
    in full) and
    ``first_target`` (APGD-T's first target
    only on points whose margin ratio after APGD-CE is at most this; 1: every point) and ``first_warm``
    (APGD-T's first target from each point's worst example, with ``give_up``, instead of a random start) and
    ``square_give_up`` (the Square stage's (query, margin fraction) give-up checkpoints; None: the
    norm's ``gradient_free.GIVE_UP``; (): every probe runs its whole budget) and ``fab_close`` (L2: FAB-T
    only on points whose margin ratio at their largest robust eps is at most this, ``CLOSE`` as for
    APGD-T's ranks 2-9; 1: every point still robust somewhere; 0: none) and ``fab_give_up`` (its (fraction of its
    steps, distance / eps) give-up checkpoints, ``fab.GIVE_UP``; (): every row runs all its steps)."""

    warm_start: bool = True
    early_stop: bool = True
    close: float = CLOSE
    halving: bool = True
    give_up: tuple[float, ...] = GIVE_UP
    first_target: float = 1.0
    first_warm: bool = False
    descend: bool = True
    restart: float | None = CLOSE_RESTART
    square_give_up: tuple[tuple[int, float], ...] | None = None
    fab_close: float = CLOSE
    fab_give_up: tuple[tuple[float, float], ...] = FAB_GIVE_UP


class Passes(NamedTuple):
    """What a batch stage spent: forward-backward passes, and forward passes without a gradient."""

    grad_evals: int
    forwards: int


@dataclass
class StageBatch:
    """One batch as a query stage finds it, after the gradient stages ran at every eps."""

    model: nn.Module  # outputs logits (``outputs.as_logits``), in eval mode
    x: torch.Tensor  # (n, C, H, W) float in [0, 1], on the device
    y: torch.Tensor  # (n,) on the device
    ids: torch.Tensor  # (n,) the points' indices in the test set: per-point random draws
    eps: list[float]  # ascending
    correct: torch.Tensor  # (n, len(eps)) bool, CPU: a stage sets False where it fools a point (in place)
    clean_margin: torch.Tensor  # (n,) max_{i != y} z_i - z_y of the clean image, on the device
    settled_margin: torch.Tensor  # (n,) the margin of the worst example at the largest eps the gradient stages left robust
    targets: int  # APGD-T's targets (FAB-T's too)
    steps: int  # APGD's steps per run (FAB-T's per target too)
    decisions_only: torch.Tensor  # (n,) bool, CPU: the outputs carry only the decision
    queries: int  # the query budget per point
    seed: int
    examples: torch.Tensor | None = None  # (len(eps), n, C, H, W), CPU: a stage writes each example it finds
    square_give_up: tuple[tuple[int, float], ...] | None = None  # Square's give-up checkpoints (``Savings``)
    norm: str = "linf"  # the threat model (``threat.NORMS``)
    fab_close: float = CLOSE  # FAB-T's gate (``Savings``)
    fab_give_up: tuple[tuple[float, float], ...] = FAB_GIVE_UP  # FAB-T's give-up checkpoints (``Savings``)


@dataclass(frozen=True)
class Stage:
    name: str  # the docs' table
    short: str  # its words in the ensemble's --help line ("" for none)
    help: str  # one line for the docs' table: what it runs, on which points
    listed: Callable[[int, int, bool], str | None]  # (targets, queries, decisions only) -> its name in ``attacks``; None: it does not run
    title: Callable[[dict], str] = lambda settings: ""  # cache settings -> its part of the label ("": none)
    runs: Callable[[int, int, Savings], list[AttackRun]] | None = None  # a gradient stage: (targets, seed, savings) -> runs
    run: Callable[[StageBatch], Passes] | None = None  # a batch stage: -> the passes it spent
    norms: tuple[str, ...] = ("linf",)  # the threat models it has a version in (L2 is opt-in)
    takes_gradients: bool = False  # a batch stage that does (runs before ``gradients_correct`` is recorded)


def _targeted(targets: int, seed: int, savings: Savings) -> list[AttackRun]:
    gate = None if savings.first_target >= 1 else savings.first_target
    first = [AttackRun("apgd-t", "dlr-targeted", (r,), seed, gate, savings.first_warm,
                       give_up=savings.give_up if savings.first_warm else ())
             for r in range(1, min(int(targets), FIRST_TARGETS) + 1)]
    rest = tuple(range(FIRST_TARGETS + 1, int(targets) + 1))
    return first + ([AttackRun("apgd-t", "dlr-targeted", rest, seed, savings.close, False,
                               HALVING if savings.halving else None, savings.give_up)] if rest else [])


def _fab(b: StageBatch) -> Passes:
    return Passes(*fab_stage(b.model, b.x, b.y, b.eps, b.correct, b.settled_margin, b.clean_margin, b.targets,
                             b.fab_close, b.steps, b.fab_give_up, b.examples))


def _square(b: StageBatch) -> Passes:
    return Passes(0, gradient_free_stage(b.model, b.x, b.y, b.ids, b.eps, b.correct, b.clean_margin, b.queries,
                                         b.seed, b.examples, b.square_give_up, b.norm))


def _rays(b: StageBatch) -> Passes:
    return Passes(0, decision_stage(b.model, b.x, b.y, b.eps, b.correct, b.decisions_only, b.queries, b.examples))


def _queries(settings: dict) -> int:
    return settings.get("queries", QUERIES_PER_STEP * settings["steps"])


STAGES: list[Stage] = [
    Stage("apgd-ce", "APGD-CE", "APGD on the standardized cross-entropy, the grid from the largest eps down: from "
          "each point's fooling example at the next larger eps, scaled into the ball, giving up on points far from "
          "fooled", lambda targets, queries, label_only: "apgd-ce", lambda s: "APGD-CE",
          runs=lambda targets, seed, savings: [AttackRun("apgd-ce", "ce-standardized", (), seed, None, savings.warm_start,
                                                         give_up=savings.give_up if savings.warm_start else ())],
          norms=("linf", "l2")),
    Stage("apgd-t", "targeted APGD-DLR", "APGD on the targeted DLR loss, targets ranked at the worst example: the "
          "first on every point, the others side by side on close points, by successive halving, giving up on far "
          "points",
          lambda targets, queries, label_only: f"apgd-t({targets} targets)" if targets else None,
          lambda s: f"APGD-T ({s['targets']} targets)" if s.get("targets") else "", runs=_targeted,
          norms=("linf", "l2")),
    Stage("apgd-ce-restart", "", "APGD-CE once more from its random start, on the points that closed half their gap "
          "(part of apgd-ce)", lambda targets, queries, label_only: None,
          runs=lambda targets, seed, savings: [AttackRun("apgd-ce-restart", "ce-standardized", (), seed, savings.restart,
                                                         False)] if savings.warm_start and savings.restart else [],
          norms=("linf", "l2")),
    Stage("fab", "FAB-T in L2", "L2 only: FAB-T towards the targets ranked at the clean image, on the points whose "
          f"worst example closed {1 - CLOSE:.0%} of the clean gap at their largest robust eps; its closest example "
          "settles every eps", lambda targets, queries, label_only: f"fab-t({targets} targets)" if targets else None,
          lambda s: f"FAB-T ({s['targets']} targets)" if s.get("targets") and s.get("norm") == "l2" else "",
          run=_fab, norms=("l2",), takes_gradients=True),
    Stage("square", "Square", "Square Attack on the points every gradient stage left robust, from the largest eps "
          "each withstood downwards, giving up on points far from fooled",
          lambda targets, queries, label_only: f"square({queries})" if queries else None,
          lambda s: f"Square ({_queries(s)} queries)" if _queries(s) else "", run=_square, norms=("linf", "l2")),
    Stage("rays", "RayS where outputs carry only decisions", "RayS on the points whose outputs carry only the "
          "decision and that every earlier stage left robust",
          lambda targets, queries, label_only: f"rays({queries})" if queries and label_only else None, run=_rays,
          norms=("linf",)),  # RayS searches L-inf directions only
]


def attack_runs(targets: int, seed: int, savings: Savings = Savings(warm_start=False)) -> list[AttackRun]:
    """Every gradient stage's runs, in STAGES order."""
    return [run for stage in STAGES if stage.runs is not None for run in stage.runs(targets, seed, savings)]


def batch_stages(norm: str | None = None) -> list[Stage]:
    """The batch stages (those running in ``norm``; None: all)."""
    return [stage for stage in STAGES if stage.run is not None and (norm is None or norm in stage.norms)]


def run_batch_stages(batch: StageBatch, gradients_correct: torch.Tensor, spent: Counter, queried: Counter) -> None:
    """The batch stages in ``batch.norm`` on one batch, where the gradient stages failed. Those that
    take gradients (FAB-T) run first; ``gradients_correct`` then records ``batch.correct``; then the
    query stages run, given a query budget. Each stage's gradient evaluations go to ``spent`` and
    its forward-only passes to ``queried`` (a gradient-taking stage's under "<name>-forwards")."""
    stages = batch_stages(batch.norm)
    for stage in [s for s in stages if s.takes_gradients]:
        passes = stage.run(batch)
        spent[stage.name] += passes.grad_evals
        queried[f"{stage.name}-forwards"] += passes.forwards
    gradients_correct.copy_(batch.correct)
    if not batch.queries:
        return
    for stage in [s for s in stages if not s.takes_gradients]:
        queried[stage.name] += stage.run(batch).forwards


def ensemble_names(targets: int, queries: int = 0, label_only: bool = False, norm: str = "linf") -> list[str]:
    """What the ensemble runs in ``norm`` with ``targets`` APGD-T targets and ``queries`` per point,
    on outputs that carry only decisions (``label_only``) or not."""
    return [name for stage in STAGES if norm in stage.norms and (name := stage.listed(targets, queries, label_only))]


def ensemble_label(settings: dict) -> str:
    """e.g. "worst case of APGD-CE + APGD-T (9 targets) + Square (5000 queries), 100 steps"."""
    parts = " + ".join(title for stage in STAGES if (title := stage.title(settings)))
    restarts = settings.get("restarts", 1)
    return f"worst case of {parts}, {settings['steps']} steps" + (f", {restarts} restarts" if restarts > 1 else "")


def ensemble_help() -> str:
    """What the ensemble runs, in words: its line in --help and the attack table."""
    words = [stage.short for stage in STAGES if stage.short]
    return f"the worst case per point of {', '.join(words[:-1])} and {words[-1]}"


def stage_table() -> str:
    """STAGES as a markdown table (docs/evaluation.md holds it; a test keeps the two equal)."""
    rows = ["| stage | kind | what it runs |", "| --- | --- | --- |"]
    rows += [f"| `{s.name}` | {'gradient' if s.runs or s.takes_gradients else 'queries'} | {s.help} |" for s in STAGES]
    return "\n".join(rows) + "\n"
