"""Obfuscated-gradient checks (paper 000 Sec. 4.6.4 / Table 5; Athalye et al. 2018; the
auto-attack flags). Each check says pass, warn or skipped (it could not run: never a pass),
with its numbers. A warn means the robustness number may be masked.

Checks (accuracy = fraction correct under the attack, on the full defended model):
  deterministic    two eval-mode forward passes agree (no randomness at test time)
  logits           outputs are not probabilities (rows summing to 1 hide gradients in CE)
  gradients        input gradients are finite and non-zero for (almost) every sample (first 256)
  fgsm_vs_pgd      one-step FGSM is not stronger than iterative PGD-k
  restarts         PGD-k with R restarts is not stronger than one start
  long_pgd         PGD-long is not stronger than PGD-k
  loss_invariance  PGD-k with the scale-invariant DLR loss is not stronger than with CE
  scale            PGD-k on the cross-entropy computed without saturation (the same direction
                   in exact arithmetic) is not stronger than PGD-k on the float32 cross-entropy:
                   catches logits times a constant wherever it weakens CE-PGD, which DLR's
                   own gap to CE hides
  unbounded        unbounded PGD-100 (step 0.01; in L2 0.01 sqrt(C H W), the length of that
                   sign step) drives accuracy to <= `zero_tol`
  bound            accuracy is at most what the constant 0.5 image allows (``bounds.accuracy_bound``):
                   in L-inf at eps 0.5 the largest class share (the 0.5 image lies in every
                   ball), in L2 per image, by its distance to the 0.5 image; for the ensemble
                   and every cached curve point
  gradient_free    the ensemble's gradient-free stage (Square) finds no point every gradient
                   attack missed, at the check's eps and at every eps of the run's cached
                   curves (where it does, gradients are masked there: the default number holds
                   only thanks to the stage, and the papers' PGD numbers are inflated)
  protocol         information: how much PGD-k (the papers' protocol) overstates the
                   worst-case ensemble; warns only far beyond what honest models show
  transfer         PGD from an independently trained surrogate is not stronger than white-box
  graybox          (ATGAN) PGD on D alone, evaluated on D(G(.)), is not stronger than white-box
  autoattack       standard AutoAttack (published arguments, 100 steps) is not stronger than the
                   ensemble (optional: needs torchattacks)

The comparisons of two attacks are paired on the same points (``evaluation.paired``): a check
warns when the stronger-than-allowed attack's extra successes are more than chance explains
(one-sided exact sign test, p < alpha) and at least the check's minimum effect (registered
with it; docs/evaluation.md says how each was set).

Each check is registered (``@register_check(name, min_effect=...)``) and takes one ``Checking``:
the subject, the settings, the context, and the measurements several checks share (PGD-k and the
ensemble over the check's grid), each computed once on first use, whichever check asks first.
A check that does not apply returns ``skipped``. Checks run in the order they are registered."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from robustgan.attacks import DEFAULT_TARGETS, AttackSettings, Batching, attack_mode, default_step_size, get_norm
from robustgan.attacks.outputs import is_probabilities
from robustgan.attacks.threat import RANDOM_TOL, classifier, eval_mode, loss_and_grad, model_device, probe_classes
from robustgan.eps import format_eps
from robustgan.errors import RobustganError
from robustgan.evaluation.bounds import BOUND_EPS, accuracy_bound, bound_eps
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.engine import Found, Subject, cached_mask, randomness, run_attack
from robustgan.evaluation.paired import ALPHA, paired
from robustgan.evaluation.verdicts import CheckResult, overall_status, skipped, status_of, summary_line  # noqa: F401
from robustgan.methods import method_class, norm_train
from robustgan.methods.standard import clean_config
from robustgan.runs import RunDir, atomic_write
from robustgan.runtime import default_eps, load_model
from robustgan.train import ensure_trained

@dataclass
class CheckSettings:
    eps: float | None = None  # None: check_run takes the run's eval or training eps
    steps: int = 40  # PGD-k, the papers' protocol and the reference of most comparisons
    long_steps: int = 1000
    restarts: int = 5
    ensemble_steps: int = 100  # APGD steps per attack of the worst-case ensemble
    targets: int = DEFAULT_TARGETS
    queries: int | None = None  # the ensemble's query budget per point (None: 50 x ensemble_steps)
    tol: float | None = None  # overrides every check's minimum effect when given
    alpha: float = ALPHA
    zero_tol: float = 0.05
    unbounded_steps: int = 100
    autoattack: bool = True
    autoattack_limit: int = 200
    seed: int = 0  # the attacks' random starts, drawn per test point
    norm: str = "linf"  # the threat model: eps and every attack are in it

    def min_effect(self, name: str) -> float:
        if self.tol is not None:
            return self.tol
        effect = CHECKS[name].min_effect if name in CHECKS else None
        if effect is None:
            raise RobustganError(f"check {name!r} compares two attacks but was registered without a min_effect")
        return effect


@dataclass
class Checking:
    """What every check gets: the subject (its model wrapped by ``threat.classifier``, in eval mode
    on the context's device; x uint8, y; the run's cache if any), the settings with a concrete
    ``eps``, the context (device, batch size), the optional surrogate and gray-box models, and from
    the run's cache the accuracies at eps >= 0.5 (``reported``) and the eps its ensemble results
    cover (``curve_eps``)."""

    subject: Subject
    settings: CheckSettings
    ctx: EvalContext = EvalContext()
    surrogate: nn.Module | None = None
    graybox: nn.Module | None = None
    reported: dict = field(default_factory=dict)
    curve_eps: list = field(default_factory=list)
    _masks: dict = field(default_factory=dict, repr=False)  # uncached results of this run, by settings

    @property
    def model(self) -> nn.Module:
        return self.subject.model

    @property
    def num_classes(self) -> int:
        return probe_classes(self.model, self.subject.x, self.subject.y)

    def attack(self, settings: AttackSettings, eps: float, subject: Subject | None = None) -> torch.Tensor:
        """Which points stay correct under ``settings`` at ``eps`` (bool (n,)), through the engine:
        from the run's cache, or measured once per check run."""
        subject = self.subject if subject is None else subject
        settings = replace(settings, seed=self.settings.seed, norm=self.settings.norm)
        key = (settings, eps, len(subject.y), id(subject.source))
        if key not in self._masks:
            self._masks[key] = cached_mask(subject, eps, settings, Batching(self.ctx.device, self.ctx.batch_size))
        return self._masks[key]

    def pgd(self, **options) -> torch.Tensor:
        """PGD-k (``s.steps``) at the check's eps, with ``options`` (AttackSettings fields)."""
        return self.attack(AttackSettings("pgd", steps=self.settings.steps, **options), self.settings.eps)

    @cached_property
    def grid(self) -> list[float]:
        """The check's eps and every finite eps > 0 of the run's cached ensemble curves."""
        return sorted({float(self.settings.eps), *self.curve_eps} - {0.0, math.inf})

    @cached_property
    def worst(self) -> Found:
        """The ensemble over ``grid`` in one uncached pass (its per-point results before the query
        stages too)."""
        settings = AttackSettings("ensemble", steps=self.settings.ensemble_steps, targets=self.settings.targets,
                                  queries=self.settings.queries, seed=self.settings.seed, norm=self.settings.norm)
        return run_attack(replace(self.subject, cache=None), self.grid, settings, self.ctx, exact=True)

    def ensemble(self, eps: float | None = None) -> torch.Tensor:
        """The ensemble's mask at ``eps`` (default the check's): from ``worst`` where its grid has
        it, else through the engine (and the run's cache)."""
        eps = self.settings.eps if eps is None else eps
        if eps in self.grid:
            return self.worst.correct[:, self.grid.index(eps)]
        return self.attack(AttackSettings("ensemble", steps=self.settings.ensemble_steps, targets=self.settings.targets,
                                          queries=self.settings.queries), eps)


@dataclass(frozen=True)
class CheckSpec:
    name: str
    run: Callable[[Checking], CheckResult]
    min_effect: float | None  # smallest accuracy gap (fraction of points) a paired comparison warns at


CHECKS: dict[str, CheckSpec] = {}


def register_check(name: str, *, min_effect: float | None = None):
    """Register ``run(c: Checking) -> CheckResult`` under ``name``; ``min_effect``: the smallest
    accuracy gap its paired comparison (``compare``) warns at. Refuses a taken name."""
    def register(run):
        if name in CHECKS:
            raise RobustganError(f"check {name!r} is registered already")
        CHECKS[name] = CheckSpec(name, run, min_effect)
        return run
    return register


def compare(c: Checking, name: str, ref: torch.Tensor, alt: torch.Tensor, ref_label: str, alt_label: str,
            note: str = "") -> CheckResult:
    """Warn when ``alt`` (an attack that must not be stronger) beats ``ref`` beyond noise and
    by at least the check's minimum effect."""
    result, effect = paired(ref, alt), c.settings.min_effect(name)
    status = "warn" if result.excess(effect, c.settings.alpha) else "pass"
    detail = (f"{alt_label} {result.alt:.1%} vs {ref_label} {result.ref:.1%}{note} ({result.describe()}; "
              f"warns at p < {c.settings.alpha:g} and a gap >= {effect:.0%})")
    return CheckResult(name, status, detail, result.as_dict() | {"min_effect": effect, "alpha": c.settings.alpha})


# The minimum effects: gaps measured on honest digits models (docs/evaluation.md, "Minimum
# effects"). Restarts and long PGD legitimately find a few points more; a one-step, transferred
# or gray-box attack, or DLR instead of CE, should find almost nothing more on an honest model.

@register_check("deterministic")
def check_deterministic(c: Checking) -> CheckResult:
    diff = randomness(c.model, c.subject.x, c.ctx.device)
    return CheckResult("deterministic", "pass" if diff <= RANDOM_TOL else "warn",
                       f"max |f(x) - f(x)| over two passes = {diff:.2e}", {"diff": diff})


@register_check("logits")
def check_logits(c: Checking) -> CheckResult:
    xb = c.subject.x[:64].float().div(255).to(c.ctx.device)
    with torch.no_grad():
        out = c.model(xb).float()
    probs = is_probabilities(out)
    return CheckResult("logits", "warn" if probs else "pass",
                       "outputs look like probabilities (non-negative, rows sum to 1)" if probs
                       else "outputs are unnormalised logits", {"probabilities": probs})


@register_check("gradients")
def check_gradients(c: Checking) -> CheckResult:
    xb, yb = c.subject.x[:256].float().div(255).to(c.ctx.device), c.subject.y[:256].to(c.ctx.device)
    with attack_mode(c.model):
        _, grad = loss_and_grad(c.model, xb.clone().requires_grad_(True), yb)
    flat = grad.flatten(1)
    zero = (flat.abs().max(1).values == 0).float().mean().item()
    broken = (~torch.isfinite(flat).all(1)).float().mean().item()
    bad = zero + broken
    return CheckResult("gradients", "pass" if bad <= c.settings.zero_tol else "warn",
                       f"{zero:.1%} of samples have an all-zero input gradient, {broken:.1%} a NaN or infinite one",
                       {"zero_fraction": zero, "nonfinite_fraction": broken})


@register_check("fgsm_vs_pgd", min_effect=0.02)
def check_fgsm_vs_pgd(c: Checking) -> CheckResult:
    fgsm = c.attack(AttackSettings("fgsm"), c.settings.eps)
    return compare(c, "fgsm_vs_pgd", c.pgd(), fgsm, f"PGD-{c.settings.steps}", "FGSM", " (one step must not win)")


@register_check("restarts", min_effect=0.06)
def check_restarts(c: Checking) -> CheckResult:
    many = c.pgd(restarts=c.settings.restarts)
    return compare(c, "restarts", c.pgd(), many, "1 start", f"{c.settings.restarts} restarts")


@register_check("long_pgd", min_effect=0.06)
def check_long_pgd(c: Checking) -> CheckResult:
    long = c.attack(AttackSettings("pgd", steps=c.settings.long_steps, step_size=default_step_size(c.settings.eps, c.settings.steps) / 4),
                    c.settings.eps)
    return compare(c, "long_pgd", c.pgd(), long, f"PGD-{c.settings.steps}", f"PGD-{c.settings.long_steps}")


@register_check("loss_invariance", min_effect=0.02)
def check_loss_invariance(c: Checking) -> CheckResult:
    """PGD-k with the DLR loss (eq. 6 of Croce & Hein 2020: invariant to scaling and shifting
    the logits) against PGD-k with cross-entropy, same steps, step size and starts: DLR
    winning means the CE gradient vanishes somewhere (a saturated softmax, a temperature),
    so the papers' CE-based numbers are masked."""
    dlr = c.attack(AttackSettings("pgd-dlr", steps=c.settings.steps), c.settings.eps)
    return compare(c, "loss_invariance", c.pgd(), dlr, f"PGD-{c.settings.steps} (CE)", f"PGD-{c.settings.steps} with DLR")


@register_check("scale", min_effect=0.01)
def check_scale(c: Checking) -> CheckResult:
    """PGD-k on the unsaturated cross-entropy (``losses.ce_unsaturated_loss``) against PGD-k on
    the cross-entropy, same steps, step size and starts. The two take the same steps wherever
    float32 holds the softmax, so an honest model gives (all but) the same points and the
    minimum effect can be small; logits times k saturate the cross-entropy on the points whose
    margin times k exceeds ~17, and there the unsaturated attack wins. Comparing like with
    like is what DLR against CE cannot do: on a PGD-AT model DLR alone can be weaker than CE,
    which hides a scale that raises CE-PGD by less than that."""
    unsaturated = c.attack(AttackSettings("pgd-unsaturated", steps=c.settings.steps), c.settings.eps)
    return compare(c, "scale", c.pgd(), unsaturated, f"PGD-{c.settings.steps} (CE)", f"PGD-{c.settings.steps} on the unsaturated CE")


@register_check("gradient_free", min_effect=0.02)
def check_gradient_free(c: Checking) -> CheckResult:
    """Per eps of the check's grid (its eps and the cached curves', attacked as a
    curve is), the paired rule on the points the ensemble's gradient stages left robust against
    those the whole ensemble (with Square) left: warns if at any eps Square found beyond chance
    and the minimum effect more than gradients did (no correction for testing several eps: a
    curve with more eps warns a little more readily). Reports the eps with the largest gap."""
    grid = c.grid
    if not grid:
        return skipped("gradient_free", "no bounded eps to check")
    found = c.worst
    per_eps = [compare(c, "gradient_free", found.gradients_correct[:, k], found.correct[:, k], "gradient attacks",
                       "gradient attacks + Square") for k in range(len(grid))]
    warned = [e for e, r in zip(grid, per_eps) if r.status == "warn"]
    k = max(range(len(grid)), key=lambda i: per_eps[i].values["gap"])
    result = per_eps[k]
    result.status = "warn" if warned else "pass"
    result.detail = (f"at eps {format_eps(grid[k])} (largest gap of {len(grid)} eps): {result.detail}"
                     + (f"; Square finds more at eps {', '.join(format_eps(e) for e in warned)}" if warned else ""))
    result.values |= {"eps": grid, "warned_eps": warned}
    return result


@register_check("unbounded")
def check_unbounded(c: Checking) -> CheckResult:
    step = 0.01 * get_norm(c.settings.norm).unbounded(c.subject.x)  # in L2 the length of an L-inf step of 0.01
    acc = c.attack(AttackSettings("pgd", steps=c.settings.unbounded_steps, step_size=step), math.inf).float().mean().item()
    return CheckResult("unbounded", "pass" if acc <= c.settings.zero_tol else "warn",
                       f"unbounded PGD-{c.settings.unbounded_steps} leaves {acc:.1%} correct (must be <= {c.settings.zero_tol:.0%})",
                       {"accuracy": acc})


@register_check("bound")
def check_bound(c: Checking) -> CheckResult:
    """The threat model's own bound (``accuracy_bound``): at ``bound_eps`` (0.5 in L-inf) every
    point's ball holds the constant 0.5 image, so no classifier is right on more than the largest
    class share of the test set; a cached curve point at any other eps is held to the bound at
    its eps (L2; in L-inf the points at eps >= 0.5)."""
    x, y, norm = c.subject.x, c.subject.y, c.settings.norm
    at = bound_eps(norm, x)
    share = torch.bincount(y.cpu(), minlength=c.num_classes).float() / max(len(y), 1)
    bound = accuracy_bound(x, y, at, norm, c.num_classes)
    with torch.no_grad():
        grey = torch.full((1, *x.shape[1:]), 0.5, device=c.ctx.device)
        grey_class = int(c.model(grey).argmax(1).item())
    acc = c.ensemble(at).double().mean().item()
    # 1e-6: float32 accuracies against exact fractions (a point is 1 / n, far more)
    over = {e: a for e, a in c.reported.items() if a > accuracy_bound(x, y, e, norm, c.num_classes) + 1e-6}
    detail = (f"ensemble at eps {format_eps(at)}: {acc:.1%} vs the bound {bound:.1%} (largest class share; the 0.5 "
              f"image alone leaves {share[grey_class].item():.1%})")
    if c.reported:
        where = f"eps >= {BOUND_EPS}" if norm == "linf" else "each eps (the bound per image distance to 0.5)"
        detail += f"; cached curve points at {where}: " + (
            ", ".join(f"{a:.1%} at {e:g}" for e, a in sorted(over.items())) + " exceed it" if over else "all within it")
    return CheckResult("bound", "warn" if acc > bound + 1e-6 or over else "pass", detail,
                       {"accuracy": acc, "bound": bound, "grey_class": grey_class, "eps": at,
                        "over": {str(e): a for e, a in over.items()}})


@register_check("protocol", min_effect=0.25)
def check_protocol(c: Checking) -> CheckResult:
    result = compare(c, "protocol", c.pgd(), c.ensemble(), f"PGD-{c.settings.steps} (papers' protocol)", "worst-case ensemble")
    gap = 100 * result.values["gap"]
    verdict = f"overstates by {gap:.1f} points" if gap >= 0 else f"is {-gap:.1f} points below the ensemble"
    result.detail = f"PGD-{c.settings.steps} {verdict}: " + result.detail
    return result


@register_check("transfer", min_effect=0.02)
def check_transfer(c: Checking) -> CheckResult:
    if c.surrogate is None:
        return skipped("transfer", "no surrogate (--surrogate RUN, or auto to train one)")
    transfer = c.attack(AttackSettings("pgd", steps=c.settings.steps), c.settings.eps,
                        c.subject.transferred(c.surrogate.to(c.ctx.device)))
    return compare(c, "transfer", c.pgd(), transfer, "white-box", "transfer from surrogate", " (transfer must not win)")


@register_check("graybox", min_effect=0.02)
def check_graybox(c: Checking) -> CheckResult:
    """Where the method offers one (``Method.graybox_model``; ATGAN: D alone, no gradient
    through G): PGD on that part, evaluated on the full pipeline."""
    if c.graybox is None:
        return skipped("graybox", "the method has no gray-box part")
    gray = c.attack(AttackSettings("pgd", steps=c.settings.steps), c.settings.eps, c.subject.transferred(c.graybox))
    return compare(c, "graybox", c.pgd(), gray, "white-box on D(G(x))", "gray-box (PGD on D alone)")


@register_check("autoattack", min_effect=0.02)
def check_autoattack(c: Checking) -> CheckResult:
    if not c.settings.autoattack:
        return skipped("autoattack", "--no-autoattack")
    try:  # optional dependency (a second to import: only when asked for)
        import torchattacks  # noqa: F401
    except ImportError:
        return skipped("autoattack", "torchattacks not installed")
    n = min(len(c.subject.y), c.settings.autoattack_limit)
    ours = c.ensemble()[:n]
    theirs = c.attack(AttackSettings("autoattack"), c.settings.eps, c.subject.first(n))  # in the check's norm
    return compare(c, "autoattack", ours, theirs, "our ensemble", "AutoAttack (torchattacks)", f" on {n} images")


def checking(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: CheckSettings,
             ctx: EvalContext = EvalContext(), **kw) -> Checking:
    """A ``Checking`` of a model on (x uint8, y), uncached (``kw``: Checking's other fields)."""
    return Checking(Subject(classifier(model), x, y), settings, ctx, **kw)


def check_model(model, x, y, settings: CheckSettings, ctx: EvalContext = EvalContext(), *, surrogate=None,
                graybox: nn.Module | None = None, on_result=None) -> list[CheckResult]:
    """Every registered check on (x uint8, y), in order; ``on_result(result)`` is called as each
    one finishes. The model and the attacks run on ``ctx.device``, in eval mode; the model goes
    back to its own device and every module's mode is restored on return."""
    return run_checks(checking(model, x, y, settings, ctx, surrogate=None if surrogate is None else classifier(surrogate),
                               graybox=graybox), on_result)


def run_checks(c: Checking, on_result=None) -> list[CheckResult]:
    """Every registered check on ``c``, in order (see ``check_model``)."""
    home = model_device(c.model)  # where the model goes back to: the checks move it to the context's device
    c.model.to(c.ctx.device)
    results = []
    with eval_mode(c.model):
        for spec in CHECKS.values():
            results.append(spec.run(c))
            if on_result is not None:
                on_result(results[-1])
    c.model.to(home)
    return results


def check_file(norm: str = "linf") -> str:
    """The file a run's checks in ``norm`` are saved to: check.json (L-inf), check-l2.json."""
    return "check.json" if norm == "linf" else f"check-{norm}.json"


def check_run(run_dir, settings: CheckSettings | None = None, ctx: EvalContext = EvalContext(), *,
              surrogate: str | None = None, surrogate_epochs: int = 5, on_result=None) -> list[CheckResult]:
    """The `robustgan check` command: every check on a run's defended model, saved to
    <run>/check.json (in L2 check-l2.json, ``check_file``). ``settings.eps`` None is the run's
    eval or training eps (in its training norm); the attacks'
    seed, batch size and device are the context's. ``surrogate`` is a run directory, or 'auto' to
    train a standard model of the same backbone into <run>/surrogate (independent seed) first."""
    settings = CheckSettings() if settings is None else settings
    if settings.long_steps <= settings.steps:
        raise RobustganError(f"--long-steps ({settings.long_steps}) must exceed --steps ({settings.steps}): the long "
                             "PGD check compares PGD-steps with a longer PGD")
    run = RunDir(run_dir)
    subject = Subject.open(run_dir, ctx)
    cfg, cache, n = subject.config, subject.cache, len(subject.y)
    if settings.eps is None and settings.norm != norm_train(cfg):
        raise RobustganError(f"check in {settings.norm} needs an eps (--eps): the run's eval and training eps are in "
                             f"{norm_train(cfg)}")
    eps = settings.eps if settings.eps is not None else default_eps(cfg)
    if not eps > 0:
        raise RobustganError("check needs an eps: pass --eps (the run has no eval or training eps)")
    surrogate_model = None
    if surrogate == "auto":
        sub = clean_config(cfg, surrogate_epochs, cfg.train.seed + 1000)  # an independent seed
        surrogate_model = load_model(ensure_trained(sub, run.path / "surrogate", data_root=ctx.data_root))
    elif surrogate:
        surrogate_model = load_model(Path(surrogate))
    s = replace(settings, eps=eps)
    reported = (cache.highest_accuracies(n, BOUND_EPS) if s.norm == "linf"
                else cache.highest_accuracies(n, 0.0, math.inf, norm=s.norm))
    c = Checking(replace(subject, model=classifier(subject.model)), s, ctx,
                 None if surrogate_model is None else classifier(surrogate_model),
                 method_class(cfg.method.name).graybox_model(subject.model), reported, cache.ensemble_eps(n, s.norm))
    results = run_checks(c, on_result)
    report = {"eps": eps, "norm": s.norm, "n": n, "alpha": s.alpha, "tol": s.tol,
              "min_effects": {k: s.min_effect(k) for k, spec in CHECKS.items() if spec.min_effect is not None},
              "steps": s.steps, "long_steps": s.long_steps, "restarts": s.restarts, "ensemble_steps": s.ensemble_steps,
              "targets": s.targets, "queries": s.queries, "status": overall_status(results),
              "summary": summary_line(results), "checks": [r.as_dict() for r in results]}
    atomic_write(run.file(check_file(s.norm)), json.dumps(report, indent=1))
    return results

