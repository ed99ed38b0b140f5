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
                   catches logits times a constant wherever it weakens CE-PGD (k >= 12 on
                   the tiny test model), which DLR's own gap to CE hides
  unbounded        unbounded PGD-100 (step 0.01) drives accuracy to <= `zero_tol`
  bound            at eps 0.5 accuracy is at most the largest class share (the constant 0.5
                   image lies in every ball), for the ensemble and every cached curve point
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
(one-sided exact sign test, p < alpha) and at least the check's minimum effect
(``MIN_EFFECT``, measured on honest digits models; docs/evaluation.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from robustgan.attacks import attack_mode, default_step_size, robust_mask, worst_case
from robustgan.attacks.ensemble import DEFAULT_TARGETS
from robustgan.attacks.outputs import is_probabilities
from robustgan.attacks.threat import RANDOM_TOL, classifier, eval_mode, loss_and_grad, model_device, output_spread
from robustgan.eps import format_eps
from robustgan.errors import RobustganError
from robustgan.evaluation.cache import EvalCache, cached_mask
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.paired import ALPHA, paired
from robustgan.evaluation.verdicts import CheckResult, overall_status, skipped, status_of, summary_line  # noqa: F401
from robustgan.methods import method_class
from robustgan.methods.standard import clean_config
from robustgan.runs import RunDir, atomic_write
from robustgan.runtime import default_eps, geometry_for, load_model, open_run
from robustgan.train import ensure_trained

# Smallest accuracy gap (fraction of points) each paired check warns at, above noise. Set
# from gaps measured on honest digits models (docs/evaluation.md, "Minimum effects"):
# restarts and long PGD legitimately find a few points more; a one-step, transferred or
# gray-box attack, or DLR instead of CE, should find almost nothing more on an honest model.
MIN_EFFECT = {"fgsm_vs_pgd": 0.02, "restarts": 0.06, "long_pgd": 0.06, "loss_invariance": 0.02, "scale": 0.01,
              "gradient_free": 0.02, "transfer": 0.02, "graybox": 0.02, "protocol": 0.25, "autoattack": 0.02}
BOUND_EPS = 0.5  # every [0, 1] image lies within 0.5 of the constant 0.5 image


@dataclass
class CheckSettings:
    eps: float | None = None  # None: check_run takes the run's eval or training eps
    steps: int = 40  # PGD-k, the papers' protocol and the reference of most comparisons
    long_steps: int = 1000
    restarts: int = 5
    ensemble_steps: int = 100  # APGD steps per attack of the worst-case ensemble
    targets: int = DEFAULT_TARGETS
    queries: int | None = None  # the ensemble's gradient-free budget per point (None: 50 x ensemble_steps)
    tol: float | None = None  # overrides every check's minimum effect when given
    alpha: float = ALPHA
    zero_tol: float = 0.05
    unbounded_steps: int = 100
    batch_size: int = 256  # check_run: the context's
    device: torch.device | str = "cpu"  # where the model and the attacks run (check_run: the context's)
    autoattack: bool = True
    autoattack_limit: int = 200
    seed: int = 0  # the attacks' random starts, drawn per point (check_run: the context's)
    cache: EvalCache | None = None  # a run's evaluation cache: attacks measured there are reused
    reported: dict = field(default_factory=dict)  # {eps: accuracy} of cached curve points (bound check)
    curve_eps: list = field(default_factory=list)  # every eps the run's ensemble results are cached at (gradient_free)
    memo: dict = field(default_factory=dict, repr=False)  # measurements shared between checks

    def min_effect(self, name: str) -> float:
        return self.tol if self.tol is not None else MIN_EFFECT[name]


def _mask(model, x, y, s: CheckSettings, **kw) -> torch.Tensor:
    """Which points stay correct under an attack (bool (n,)), measured once per check run and,
    for a run, through its evaluation cache. Random starts are drawn per point (``s.seed``), so
    PGD with restarts starts its first run where plain PGD does."""
    key = (id(model), len(y), tuple(sorted((k, id(v) if isinstance(v, nn.Module) else v) for k, v in kw.items())))
    if key not in s.memo:
        kw = {"seed": s.seed, "batch_size": s.batch_size, "device": s.device, **kw}
        cacheable = s.cache is not None and "source" not in kw and kw["attack"] != "autoattack"
        s.memo[key] = (cached_mask(s.cache, model, x, y, **kw) if cacheable else robust_mask(model, x, y, **kw))
    return s.memo[key]


def _pgd(model, x, y, s, **kw) -> torch.Tensor:
    return _mask(model, x, y, s, attack="pgd", eps=s.eps, steps=s.steps, **kw)


def _ensemble(model, x, y, s, eps=None) -> torch.Tensor:
    """The ensemble's mask at ``eps`` (default the check's), from the gradient_free check's
    run when it covered that eps (the same attacks, seed and points), else measured."""
    eps = s.eps if eps is None else eps
    found = s.memo.get(("worst_case", id(model), len(y)))
    if found is not None and eps in found.eps:
        return found.correct[:, found.eps.index(eps)]
    return _mask(model, x, y, s, attack="ensemble", eps=eps, steps=s.ensemble_steps, targets=s.targets,
                 queries=s.queries)


def compare(name: str, s: CheckSettings, ref: torch.Tensor, alt: torch.Tensor, ref_label: str, alt_label: str,
            note: str = "") -> CheckResult:
    """Warn when ``alt`` (an attack that must not be stronger) beats ``ref`` beyond noise and
    by at least the check's minimum effect."""
    result, effect = paired(ref, alt), s.min_effect(name)
    status = "warn" if result.excess(effect, s.alpha) else "pass"
    detail = (f"{alt_label} {result.alt:.1%} vs {ref_label} {result.ref:.1%}{note} ({result.describe()}; "
              f"warns at p < {s.alpha:g} and a gap >= {effect:.0%})")
    return CheckResult(name, status, detail, result.as_dict() | {"min_effect": effect, "alpha": s.alpha})


def check_deterministic(model, x, y, s) -> CheckResult:
    diff = output_spread(model, x[:64].to(s.device))
    return CheckResult("deterministic", "pass" if diff <= RANDOM_TOL else "warn",
                       f"max |f(x) - f(x)| over two passes = {diff:.2e}", {"diff": diff})


def check_logits(model, x, y, s) -> CheckResult:
    xb = x[:64].float().div(255).to(s.device)
    with torch.no_grad():
        out = model(xb).float()
    probs = is_probabilities(out)
    return CheckResult("logits", "warn" if probs else "pass",
                       "outputs look like probabilities (non-negative, rows sum to 1)" if probs
                       else "outputs are unnormalised logits", {"probabilities": probs})


def check_gradients(model, x, y, s) -> CheckResult:
    xb, yb = x[:256].float().div(255).to(s.device), y[:256].to(s.device)
    with attack_mode(model):
        _, grad = loss_and_grad(model, xb.clone().requires_grad_(True), yb)
    flat = grad.flatten(1)
    zero = (flat.abs().max(1).values == 0).float().mean().item()
    broken = (~torch.isfinite(flat).all(1)).float().mean().item()
    bad = zero + broken
    return CheckResult("gradients", "pass" if bad <= s.zero_tol else "warn",
                       f"{zero:.1%} of samples have an all-zero input gradient, {broken:.1%} a NaN or infinite one",
                       {"zero_fraction": zero, "nonfinite_fraction": broken})


def check_fgsm_vs_pgd(model, x, y, s) -> CheckResult:
    fgsm = _mask(model, x, y, s, attack="fgsm", eps=s.eps)
    return compare("fgsm_vs_pgd", s, _pgd(model, x, y, s), fgsm, f"PGD-{s.steps}", "FGSM",
                   " (one step must not win)")


def check_restarts(model, x, y, s) -> CheckResult:
    many = _pgd(model, x, y, s, restarts=s.restarts)
    return compare("restarts", s, _pgd(model, x, y, s), many, "1 start", f"{s.restarts} restarts")


def check_long_pgd(model, x, y, s) -> CheckResult:
    long = _mask(model, x, y, s, attack="pgd", eps=s.eps, steps=s.long_steps,
                 step_size=default_step_size(s.eps, s.steps) / 4)
    return compare("long_pgd", s, _pgd(model, x, y, s), long, f"PGD-{s.steps}", f"PGD-{s.long_steps}")


def check_loss_invariance(model, x, y, s) -> CheckResult:
    """PGD-k with the DLR loss (eq. 6 of Croce & Hein 2020: invariant to scaling and shifting
    the logits) against PGD-k with cross-entropy, same steps, step size and starts: DLR
    winning means the CE gradient vanishes somewhere (a saturated softmax, a temperature),
    so the papers' CE-based numbers are masked."""
    dlr = _mask(model, x, y, s, attack="pgd-dlr", eps=s.eps, steps=s.steps)
    return compare("loss_invariance", s, _pgd(model, x, y, s), dlr, f"PGD-{s.steps} (CE)",
                   f"PGD-{s.steps} with DLR")


def check_scale(model, x, y, s) -> CheckResult:
    """PGD-k on the unsaturated cross-entropy (``losses.ce_unsaturated_loss``) against PGD-k on
    the cross-entropy, same steps, step size and starts. The two take the same steps wherever
    float32 holds the softmax, so an honest model gives (all but) the same points and the
    minimum effect can be small; logits times k saturate the cross-entropy on the points whose
    margin times k exceeds ~17, and there the unsaturated attack wins. Comparing like with
    like is what DLR against CE cannot do: on a PGD-AT model DLR alone is a point or two
    weaker than CE, which hides a scale that raises CE-PGD by less than that."""
    unsaturated = _mask(model, x, y, s, attack="pgd-unsaturated", eps=s.eps, steps=s.steps)
    return compare("scale", s, _pgd(model, x, y, s), unsaturated, f"PGD-{s.steps} (CE)",
                   f"PGD-{s.steps} on the unsaturated CE")


def check_unbounded(model, x, y, s) -> CheckResult:
    acc = _mask(model, x, y, s, attack="pgd", eps=math.inf, steps=s.unbounded_steps,
                step_size=0.01).float().mean().item()
    return CheckResult("unbounded", "pass" if acc <= s.zero_tol else "warn",
                       f"unbounded PGD-{s.unbounded_steps} leaves {acc:.1%} correct (must be <= {s.zero_tol:.0%})", {"accuracy": acc})


def check_bound(model, x, y, s, num_classes) -> CheckResult:
    """The threat model's own bound: at eps >= 0.5 the constant 0.5 image is in every ball,
    so no classifier is right on more than the largest class share of the test set."""
    share = torch.bincount(y.cpu(), minlength=num_classes).float() / max(len(y), 1)
    bound = share.max().item()
    with torch.no_grad():
        grey = torch.full((1, *x.shape[1:]), 0.5, device=s.device)
        grey_class = int(model(grey).argmax(1).item())
    acc = _ensemble(model, x, y, s, eps=BOUND_EPS).float().mean().item()
    over = {e: a for e, a in s.reported.items() if e >= BOUND_EPS and a > bound + 1e-9}
    detail = (f"ensemble at eps {BOUND_EPS}: {acc:.1%} vs the bound {bound:.1%} (largest class share; the 0.5 image "
              f"alone leaves {share[grey_class].item():.1%})")
    if s.reported:
        detail += f"; cached curve points at eps >= {BOUND_EPS}: " + (
            ", ".join(f"{a:.1%} at {e:g}" for e, a in sorted(over.items())) + " exceed it" if over else "all within it")
    return CheckResult("bound", "warn" if acc > bound + 1e-9 or over else "pass", detail,
                       {"accuracy": acc, "bound": bound, "grey_class": grey_class,
                        "over": {str(e): a for e, a in over.items()}})


def check_gradient_free(model, x, y, s) -> CheckResult:
    """Per eps of the check's eps and the cached curves' (ascending, warm-started as a curve is),
    the paired rule on the points the ensemble's gradient attacks left robust against those the
    whole ensemble (with Square) left: warns if at any eps Square found beyond chance and the
    minimum effect more than gradients did (no correction for testing several eps: a curve
    with more eps warns a little more readily). Reports the eps with the largest gap."""
    grid = sorted({float(s.eps), *s.curve_eps} - {0.0, math.inf})
    if not grid:
        return skipped("gradient_free", "no bounded eps to check")
    found = worst_case(model, x, y, grid, steps=s.ensemble_steps, targets=s.targets, seed=s.seed,
                       batch_size=s.batch_size, device=s.device, queries=s.queries)
    s.memo[("worst_case", id(model), len(y))] = found  # the ensemble's results at these eps, for the other checks
    per_eps = [compare("gradient_free", s, found.gradients_correct[:, k], found.correct[:, k], "gradient attacks",
                       "gradient attacks + Square") for k in range(len(grid))]
    warned = [e for e, r in zip(grid, per_eps) if r.status == "warn"]
    k = max(range(len(grid)), key=lambda i: per_eps[i].values["gap"])
    result = per_eps[k]
    result.status = "warn" if warned else "pass"
    result.detail = (f"at eps {format_eps(grid[k])} (largest gap of {len(grid)} eps): {result.detail}"
                     + (f"; Square finds more at eps {', '.join(format_eps(e) for e in warned)}" if warned else ""))
    result.values |= {"eps": grid, "warned_eps": warned}
    return result


def check_protocol(model, x, y, s) -> CheckResult:
    ref, worst = _pgd(model, x, y, s), _ensemble(model, x, y, s)
    result = compare("protocol", s, ref, worst, f"PGD-{s.steps} (papers' protocol)", "worst-case ensemble")
    gap = 100 * result.values["gap"]
    verdict = f"overstates by {gap:.1f} points" if gap >= 0 else f"is {-gap:.1f} points below the ensemble"
    result.detail = f"PGD-{s.steps} {verdict}: " + result.detail
    return result


def check_transfer(model, x, y, s, surrogate: nn.Module | None) -> CheckResult:
    if surrogate is None:
        return skipped("transfer", "no surrogate (--surrogate RUN, or auto to train one)")
    transfer = _pgd(model, x, y, s, source=surrogate.to(s.device))
    return compare("transfer", s, _pgd(model, x, y, s), transfer, "white-box", "transfer from surrogate",
                   " (transfer must not win)")


def check_graybox(model, x, y, s, graybox: nn.Module | None) -> CheckResult | None:
    """Where the method offers one (``Method.graybox_model``; ATGAN: D alone, no gradient
    through G): PGD on that part, evaluated on the full pipeline."""
    if graybox is None:
        return None  # not applicable: the method has no gray-box model
    gray = _pgd(model, x, y, s, source=graybox)
    return compare("graybox", s, _pgd(model, x, y, s), gray, "white-box on D(G(x))",
                   "gray-box (PGD on D alone)")


def check_autoattack(model, x, y, s, num_classes) -> CheckResult:
    if not s.autoattack:
        return skipped("autoattack", "--no-autoattack")
    try:  # optional dependency (a second to import: only when asked for)
        import torchattacks  # noqa: F401
    except ImportError:
        return skipped("autoattack", "torchattacks not installed")
    n = min(len(y), s.autoattack_limit)
    ours = _ensemble(model, x, y, s)[:n]
    theirs = _mask(model, x[:n], y[:n], s, attack="autoattack", eps=s.eps, num_classes=num_classes)
    return compare("autoattack", s, ours, theirs, "our ensemble", "AutoAttack (torchattacks)", f" on {n} images")


def check_model(model, x, y, settings: CheckSettings, *, surrogate=None, num_classes=10,
                on_result=None, graybox: nn.Module | None = None) -> list[CheckResult]:
    """All checks on (x uint8, y); ``on_result(result)`` is called as each one finishes.
    Checks that do not apply (graybox without a gray-box model) are left out. The model and
    the attacks run on ``settings.device``, in eval mode; every module's mode is restored on
    return."""
    home = model_device(model)  # where the model goes back to: the checks move it to settings.device
    model = classifier(model.to(settings.device))
    surrogate = None if surrogate is None else classifier(surrogate)
    plan = [
        lambda: check_deterministic(model, x, y, settings),
        lambda: check_logits(model, x, y, settings),
        lambda: check_gradients(model, x, y, settings),
        lambda: check_fgsm_vs_pgd(model, x, y, settings),
        lambda: check_restarts(model, x, y, settings),
        lambda: check_long_pgd(model, x, y, settings),
        lambda: check_loss_invariance(model, x, y, settings),
        lambda: check_scale(model, x, y, settings),
        lambda: check_gradient_free(model, x, y, settings),
        lambda: check_unbounded(model, x, y, settings),
        lambda: check_bound(model, x, y, settings, num_classes),
        lambda: check_protocol(model, x, y, settings),
        lambda: check_transfer(model, x, y, settings, surrogate),
        lambda: check_graybox(model, x, y, settings, graybox),
        lambda: check_autoattack(model, x, y, settings, num_classes),
    ]
    results = []
    with eval_mode(model):
        for run_check in plan:
            result = run_check()
            if result is None:
                continue
            results.append(result)
            if on_result is not None:
                on_result(result)
    model.to(home)
    return results


def cached_curve_eps(cache: EvalCache, n: int) -> list[float]:
    """Every finite eps > 0 the ensemble was cached at for the first ``n`` test points."""
    return sorted({float(st["eps"]) for st, _ in cache.results()
                   if st.get("attack") == "ensemble" and st.get("n") == n and 0 < st["eps"] < math.inf})


def reported_accuracies(cache: EvalCache, n: int) -> dict[float, float]:
    """{eps: accuracy} of every result cached for the first ``n`` test points at eps >= 0.5
    (the highest over attacks): what the bound check holds a run's curves to (the bound is
    these n points' largest class share)."""
    highest: dict[float, float] = {}
    for settings, mask in cache.results():
        eps = settings.get("eps")
        if settings.get("n") == n and isinstance(eps, (int, float)) and BOUND_EPS <= eps <= 1 and n:
            highest[float(eps)] = max(highest.get(float(eps), 0.0), mask.float().mean().item())
    return highest


def check_run(run_dir, settings: CheckSettings | None = None, ctx: EvalContext = EvalContext(), *,
              surrogate: str | None = None, surrogate_epochs: int = 5, on_result=None) -> list[CheckResult]:
    """The `robustgan check` command: every check on a run's defended model, saved to
    <run>/check.json. ``settings.eps`` None is the run's eval or training eps; the attacks'
    seed, batch size and device are the context's. ``surrogate`` is a run directory, or 'auto' to
    train a standard model of the same backbone into <run>/surrogate (independent seed) first."""
    settings = CheckSettings() if settings is None else settings
    if settings.long_steps <= settings.steps:
        raise RobustganError(f"--long-steps ({settings.long_steps}) must exceed --steps ({settings.steps}): the long "
                             "PGD check compares PGD-steps with a longer PGD")
    run = RunDir(run_dir)
    cfg, model, x, y = open_run(run_dir, limit=ctx.limit, data_root=ctx.data_root, device=ctx.device)
    eps = settings.eps if settings.eps is not None else default_eps(cfg)
    if not eps > 0:
        raise RobustganError("check needs an eps: pass --eps (the run has no eval or training eps)")
    surrogate_model = None
    if surrogate == "auto":
        sub = clean_config(cfg, surrogate_epochs, cfg.train.seed + 1000)  # an independent seed
        surrogate_model = load_model(ensure_trained(sub, run.path / "surrogate", data_root=ctx.data_root))
    elif surrogate:
        surrogate_model = load_model(Path(surrogate))
    cache = EvalCache(run_dir)
    s = replace(settings, eps=eps, seed=ctx.seed, batch_size=ctx.batch_size, device=ctx.device, cache=cache,
                reported=reported_accuracies(cache, len(y)), curve_eps=cached_curve_eps(cache, len(y)), memo={})
    results = check_model(model, x, y, s, surrogate=surrogate_model, num_classes=geometry_for(cfg.data).num_classes,
                          on_result=on_result, graybox=method_class(cfg.method.name).graybox_model(model))
    report = {"eps": eps, "n": len(y), "alpha": s.alpha, "tol": s.tol,
              "min_effects": {k: s.min_effect(k) for k in MIN_EFFECT}, "steps": s.steps,
              "long_steps": s.long_steps, "restarts": s.restarts, "ensemble_steps": s.ensemble_steps,
              "targets": s.targets, "queries": s.queries, "status": overall_status(results), "summary": summary_line(results),
              "checks": [r.as_dict() for r in results]}
    atomic_write(run.file("check.json"), json.dumps(report, indent=1))
    return results
