"""The one evaluation path: every command (eval, curve, check, card, report, demo),
``robustgan.evaluate`` and the checks reach the attacks through ``run_attack``.

Given a subject (a model and its test points, and for a run its evaluation cache, opened once per
command), an eps grid, attack settings and the context, ``run_attack`` decides once whether the
ensemble runs or EOT does (``choose``: EOT where two passes over the same images differ), runs the
ensemble over the whole grid in one pass or any other attack eps by eps, takes what the cache
holds and adds what it computes, and returns the per-point matrix with what it cost."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from robustgan.attacks import AttackSettings, Batching, robust_mask, worst_case
from robustgan.attacks.ensemble import usable_targets
from robustgan.attacks.stages import STAGES, ensemble_names
from robustgan.attacks.outputs import decisions_only_fraction
from robustgan.attacks.threat import RANDOM_TOL, eval_mode, output_spread, probe_classes
from robustgan.config import Config
from robustgan.distributed import sharded, sum_across_ranks
from robustgan.evaluation.cache import EvalCache
from robustgan.evaluation.context import Advance, EvalContext
from robustgan.runtime import open_run

RANDOMNESS_PROBE = 64  # the first test images the randomness test passes twice through the model


@dataclass
class Subject:
    """What one command evaluates, opened once: the model (eval mode while attacked), its test
    points (x uint8 or float in [0, 1], y), and for a run its config and evaluation cache.
    ``source``: a transfer or gray-box attack's model (examples made on it, scored on ``model``;
    never cached)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    cache: EvalCache | None = None
    config: Config | None = None
    path: Path | None = None
    source: nn.Module | None = None

    @classmethod
    def open(cls, run_dir, ctx: EvalContext = EvalContext()) -> Subject:
        """A run's defended model on the context's device, its first ``ctx.limit`` test points and its cache."""
        cfg, model, x, y = open_run(run_dir, limit=ctx.limit, data_root=ctx.data_root, device=ctx.device)
        return cls(model, x, y, EvalCache(run_dir), cfg, Path(run_dir))

    def first(self, n: int) -> Subject:
        """The first ``n`` points, uncached (a check's smaller attack)."""
        return replace(self, x=self.x[:n], y=self.y[:n], cache=None)

    def transferred(self, source: nn.Module) -> Subject:
        """Examples made on ``source``, scored on this subject's model (uncached)."""
        return replace(self, source=source, cache=None)


@dataclass
class Found:
    """Per-point results of one attack over an eps grid, and what they cost."""

    settings: AttackSettings  # what ran: the ensemble's settings become EOT's on a randomized model
    eps: list[float]  # as asked
    correct: torch.Tensor  # (n, len(eps)) bool: point i withstood the attack at eps[k]
    clean: torch.Tensor  # (n,) bool
    attacks: list[str]  # what ran, in order
    cost: dict | None  # {"grad_evals", "forwards", "by_stage"} spent (ensemble only; cached results cost nothing)
    decisions_only: float  # fraction of points whose outputs carry only decisions: accuracies are upper bounds
    seconds: float
    gradients_correct: torch.Tensor | None = None  # (n, len(eps)): the ensemble before its query stages (uncached)


def randomness(model: nn.Module, x: torch.Tensor, device) -> float:
    """The randomness test: the largest difference between two eval-mode passes over the first
    ``RANDOMNESS_PROBE`` test images (``threat.output_spread``); above ``threat.RANDOM_TOL`` the
    model is randomized (``choose``, and the checks' ``deterministic``)."""
    return output_spread(model, x[:RANDOMNESS_PROBE].to(device))


def choose(model: nn.Module, x: torch.Tensor, settings: AttackSettings, device) -> AttackSettings:
    """The settings that run: the ensemble's become EOT's (same steps and seed) on a randomized
    model (``randomness``): the ensemble's gradients and queries are scored on single draws,
    which randomness misleads."""
    if settings.name == "ensemble" and randomness(model, x, device) > RANDOM_TOL:
        return replace(settings, name="eot")
    return settings


def run_attack(subject: Subject, eps: list[float], settings: AttackSettings, ctx: EvalContext = EvalContext(),
               advance: Advance | None = None, *, exact: bool = False) -> Found:
    """``settings``' attack on the subject at every eps of ``eps``, through its cache when it has
    one: the ensemble over the whole grid in one pass (``ensemble_grid``), any other
    attack eps by eps, and the clean pass. ``advance(k)`` is told of the points (or point-eps
    pairs) done. ``exact``: run these settings as they are, the ensemble even on a randomized
    model (the checks compare named attacks). Every module's mode is as it was on return."""
    start = time.perf_counter()
    settings.check()  # an attack without a version in the settings' norm: one line
    model, x, y = subject.model, subject.x, subject.y
    batching = Batching(ctx.device, ctx.batch_size, advance, ctx.channels_last)
    with eval_mode(model):
        settings = settings if exact else choose(model, x, settings, ctx.device)
        if settings.name == "ensemble" and subject.source is None:
            return _ensemble(subject, list(eps), settings.resolved(), batching, start)
        clean = cached_mask(subject, 0.0, AttackSettings("none"), replace(batching, advance=None))
        correct = torch.stack([cached_mask(subject, e, settings, batching) for e in eps], 1) if eps else \
            torch.zeros(len(y), 0, dtype=torch.bool)
        label_only = decisions_only_fraction(model, x, ctx.batch_size, ctx.device)
    return Found(settings=settings, eps=list(eps), correct=correct, clean=clean, attacks=[settings.name], cost=None,
                 decisions_only=label_only, seconds=time.perf_counter() - start)


def _ensemble(subject: Subject, eps: list[float], s: AttackSettings, batching: Batching, start: float) -> Found:
    """The ensemble over the grid: through the cache (``ensemble_grid``), else in one ``worst_case``."""
    model, x, y = subject.model, subject.x, subject.y
    if subject.cache is None:
        found = worst_case(model, x, y, sorted(set(eps)), s, batching)
        columns = [found.eps.index(e) for e in eps]  # worst_case's eps are ascending
        return Found(settings=s, eps=eps, correct=found.correct[:, columns], clean=found.clean, attacks=found.attacks,
                     cost={"grad_evals": found.grad_evals, "forwards": found.forwards, "by_stage": found.by_stage},
                     decisions_only=found.decisions_only.float().mean().item() if len(y) else 0.0,
                     seconds=time.perf_counter() - start, gradients_correct=found.gradients_correct[:, columns])
    spent = Counter()
    clean = cached_mask(subject, 0.0, AttackSettings("none"), replace(batching, advance=None))
    correct = ensemble_grid(subject, eps, s, batching, clean, spent)
    names = ["grad_evals", "forwards", *(stage.name for stage in STAGES)]
    total = sum_across_ranks(torch.tensor([spent[k] for k in names], dtype=torch.float64)).tolist()
    spent = dict(zip(names, map(int, total)))  # the whole evaluation's, under torchrun too
    spent = {"grad_evals": spent.pop("grad_evals"), "forwards": spent.pop("forwards"),
             "by_stage": {k: v for k, v in spent.items() if v}}
    label_only = decisions_only_fraction(model, x, batching.batch_size, batching.device)
    classes = probe_classes(model, x[:1].to(batching.device), y) if len(y) else 10
    attacks = ensemble_names(usable_targets(s.targets, classes), s.queries, label_only > 0, s.norm)
    return Found(settings=s, eps=eps, correct=correct, clean=clean, attacks=attacks, cost=spent,
                 decisions_only=label_only, seconds=time.perf_counter() - start)


def cached_mask(subject: Subject, eps: float, settings: AttackSettings, batching: Batching) -> torch.Tensor:
    """``robust_mask`` through the subject's cache when it has one (same settings, same weights:
    same answer, computed once). Under torchrun the points are sharded across the ranks (every
    rank gets, and merges into the cache, the whole mask)."""
    model, x, y, cache = subject.model, subject.x, subject.y, subject.cache
    key = settings.key(eps, len(y))
    hit = None if cache is None else cache.get(**key)
    if hit is not None:
        batching.done(len(y))
        return hit
    mask = sharded(lambda ids: robust_mask(model, x[ids], y[ids], eps, settings, batching, ids=ids,
                                           source=subject.source), len(y))
    if cache is not None:
        cache.put(mask, **key)
    return mask


def ensemble_grid(subject: Subject, grid: list[float], settings: AttackSettings, batching: Batching,
                  clean: torch.Tensor, spent: Counter) -> torch.Tensor:
    """(n, len(grid)) per-point results of the ensemble through the cache. Only eps values not
    cached are attacked (in one pass over them, from the largest down; points fooled at a smaller cached
    eps are skipped), and every result is closed upwards over all cached eps: a point fooled at
    eps' is fooled at every eps >= eps'.

    Resumable: the points are attacked one batch at a time and each batch's results are
    saved (``cache.partial()``) before the next starts, so a curve killed mid-way redoes only
    the batch it was in. The random starts are drawn per test point, so the batches give
    what one pass over all points gives. ``spent`` gets this process's gradient evaluations,
    query-stage forward passes and passes per stage added (nothing for cached results; under torchrun each rank's
    own, which ``run_attack`` sums)."""
    model, x, y, cache = subject.model, subject.x, subject.y, subject.cache
    base = settings.key(1.0, len(y))
    del base["eps"]
    known = cache.matching(**base)
    missing = sorted({e for e in grid if e > 0 and e not in known})
    if missing:
        fooled_below = [torch.stack([~m for e2, m in known.items() if e2 < e] or [torch.zeros(len(y), dtype=torch.bool)])
                        .any(0) for e in missing]
        known_fooled = torch.stack(fooled_below, 1)
        partial, parts, batch_keys = cache.partial(), [], []
        for lo in range(0, len(y), batching.batch_size):
            points = torch.arange(lo, min(lo + batching.batch_size, len(y)))
            keys = [base | {"eps": e, "n": len(points), "points": f"{lo}:{lo + len(points)}"} for e in missing]
            batch_keys += keys
            done = [partial.get(**key) for key in keys]
            if any(mask is None for mask in done):
                def attack(ids):
                    found = worst_case(model, x[points[ids]], y[points[ids]], missing, settings, batching,
                                       ids=points[ids], known_fooled=known_fooled[points[ids]])
                    spent.update({"grad_evals": found.grad_evals, "forwards": found.forwards} | found.by_stage)
                    return found.correct

                part = sharded(attack, len(points))
                partial.put_many([(part[:, k], key) for k, key in enumerate(keys)])
            else:
                part = torch.stack(done, 1)
                batching.done(len(points) * len(missing))
            parts.append(part)
        found = torch.cat(parts)
        cache.put_many([(found[:, k], base | {"eps": e}) for k, e in enumerate(missing)])
        partial.discard(batch_keys)  # the whole curve is cached now: its batches are not needed
        known |= {e: found[:, k] for k, e in enumerate(missing)}
    else:
        batching.done(len(y) * len(grid))
    closed, running = {0.0: clean}, clean.clone()
    for e in sorted(known):
        running &= known[e]
        closed[e] = running.clone()
    return torch.stack([closed[e] for e in grid], 1)
