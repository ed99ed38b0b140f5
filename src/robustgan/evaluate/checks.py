"""Obfuscated-gradient checks (paper 000 Sec. 5 / Table 5; Athalye et al. 2018; the
auto-attack flags). Every check compares two measurements on the same test images and
says pass or warn, with the numbers. A warn means the robustness number may be masked.

Checks (accuracy = fraction correct under the attack, on the full defended model):
  deterministic   two eval-mode forward passes agree (no randomness at test time)
  logits          outputs are not probabilities (rows summing to 1 hide gradients in CE)
  gradients       input gradients are non-zero for (almost) every sample
  long_pgd        PGD-k is not weaker than PGD-long by more than `tol`
  restarts        PGD-k with R restarts is not stronger than one start by more than `tol`
  unbounded       unbounded PGD-100 drives accuracy to <= `zero_tol`
  fgsm_vs_pgd     one-step FGSM is not stronger than iterative PGD (by more than `tol`)
  transfer        PGD from an independently trained surrogate is not stronger than white-box
  autoattack      AutoAttack (APGD-CE, APGD-T, FAB-T, Square) is not stronger than PGD-k
  graybox         (ATGAN) PGD on D alone, evaluated on D(G(.)), is not stronger than white-box
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from robustgan.attacks import attack_mode, default_step_size, robust_accuracy
from robustgan.attacks.threat import loss_and_grad
from robustgan.errors import RobustganError
from robustgan.methods.standard import clean_config
from robustgan.runs import RunDir, atomic_write
from robustgan.runtime import default_eps, geometry_for, load_model, open_run
from robustgan.train import ensure_trained


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    values: dict

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckSettings:
    eps: float
    steps: int = 40
    long_steps: int = 1000
    restarts: int = 5
    tol: float = 0.05  # accuracy allowed for attack noise (paired comparisons on the same images)
    zero_tol: float = 0.05
    batch_size: int = 256
    autoattack: bool = True
    autoattack_limit: int = 200
    memo: dict = field(default_factory=dict, repr=False)  # measurements shared between checks


def _acc(model, x, y, s: CheckSettings, device, seed=0, **kw) -> float:
    """Accuracy under an attack, measured once per (settings, n) within one check run."""
    key = (len(y), seed, tuple((k, id(v) if isinstance(v, nn.Module) else v) for k, v in sorted(kw.items())))
    if key not in s.memo:
        torch.manual_seed(seed)
        s.memo[key] = robust_accuracy(model, x, y, batch_size=s.batch_size, device=device, **kw)
    return s.memo[key]


def check_deterministic(model, x, y, s, device) -> CheckResult:
    xb = x[:64].float().div(255).to(device)
    model.eval()
    with torch.no_grad():
        a, b = model(xb), model(xb)
    diff = (a - b).abs().max().item()
    return CheckResult("deterministic", diff <= 1e-5, f"max |f(x) - f(x)| over two passes = {diff:.2e}", {"diff": diff})


def check_logits(model, x, y, s, device) -> CheckResult:
    xb = x[:64].float().div(255).to(device)
    with torch.no_grad():
        out = model.eval()(xb).float()
    looks_like_probs = bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), device=device), atol=1e-3))
    return CheckResult("logits", not looks_like_probs,
                       "outputs look like probabilities (non-negative, rows sum to 1)" if looks_like_probs
                       else "outputs are unnormalised logits", {"probabilities": looks_like_probs})


def check_gradients(model, x, y, s, device) -> CheckResult:
    xb, yb = x[:256].float().div(255).to(device), y[:256].to(device)
    with attack_mode(model):
        _, grad = loss_and_grad(model, xb.clone().requires_grad_(True), yb)
    zero = (grad.flatten(1).abs().max(1).values == 0).float().mean().item()
    return CheckResult("gradients", zero <= 0.05, f"{zero:.1%} of samples have an all-zero input gradient",
                       {"zero_fraction": zero})


def check_long_pgd(model, x, y, s, device) -> CheckResult:
    short = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    long = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.long_steps,
                step_size=default_step_size(s.eps, s.steps) / 4)
    return CheckResult("long_pgd", short - long <= s.tol,
                       f"PGD-{s.steps} {short:.1%} vs PGD-{s.long_steps} {long:.1%}", {"short": short, "long": long})


def check_restarts(model, x, y, s, device) -> CheckResult:
    one = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    many = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps, restarts=s.restarts)
    return CheckResult("restarts", one - many <= s.tol,
                       f"1 start {one:.1%} vs {s.restarts} restarts {many:.1%}", {"one": one, "restarts": many})


def check_unbounded(model, x, y, s, device) -> CheckResult:
    acc = _acc(model, x, y, s, device, attack="pgd", eps=math.inf, steps=100, step_size=0.01)
    return CheckResult("unbounded", acc <= s.zero_tol, f"unbounded PGD-100 leaves {acc:.1%} correct (must be ~0)",
                       {"accuracy": acc})


def check_fgsm_vs_pgd(model, x, y, s, device) -> CheckResult:
    acc_fgsm = _acc(model, x, y, s, device, attack="fgsm", eps=s.eps)
    acc_pgd = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    return CheckResult("fgsm_vs_pgd", acc_fgsm >= acc_pgd - s.tol,
                       f"FGSM {acc_fgsm:.1%} vs PGD-{s.steps} {acc_pgd:.1%} (one-step must not win)",
                       {"fgsm": acc_fgsm, "pgd": acc_pgd})


def check_transfer(model, x, y, s, device, surrogate: nn.Module | None) -> CheckResult:
    if surrogate is None:
        return CheckResult("transfer", True, "skipped: no surrogate (--surrogate RUN)", {"skipped": True})
    white = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    transfer = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps, source=surrogate.to(device))
    return CheckResult("transfer", transfer >= white - s.tol,
                       f"transfer from surrogate {transfer:.1%} vs white-box {white:.1%} (transfer must not win)",
                       {"transfer": transfer, "white_box": white})


def check_autoattack(model, x, y, s, device, num_classes) -> CheckResult:
    try:  # optional dependency
        import torchattacks  # noqa: F401
    except ImportError:
        return CheckResult("autoattack", True, "skipped: torchattacks not installed", {"skipped": True})
    if not s.autoattack:
        return CheckResult("autoattack", True, "skipped (--no-autoattack)", {"skipped": True})
    xs, ys = x[:s.autoattack_limit], y[:s.autoattack_limit]
    acc_pgd = _acc(model, xs, ys, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    acc_aa = _acc(model, xs, ys, s, device, attack="autoattack", eps=s.eps, num_classes=num_classes)
    return CheckResult("autoattack", acc_aa >= acc_pgd - s.tol,
                       f"AutoAttack {acc_aa:.1%} vs PGD-{s.steps} {acc_pgd:.1%} on {len(ys)} images",
                       {"autoattack": acc_aa, "pgd": acc_pgd, "n": len(ys)})


def check_graybox(model, x, y, s, device) -> CheckResult | None:
    """ATGAN only: attack D alone (no gradient through G), evaluate the full pipeline."""
    if not (isinstance(model, nn.Sequential) and len(model) == 2 and hasattr(model[1], "both")):
        return None
    white = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps)
    gray = _acc(model, x, y, s, device, attack="pgd", eps=s.eps, steps=s.steps, source=model[1])
    return CheckResult("graybox", gray >= white - s.tol,
                       f"gray-box (PGD on D alone) {gray:.1%} vs white-box on D(G(x)) {white:.1%}",
                       {"graybox": gray, "white_box": white})


def check_model(model, x, y, settings: CheckSettings, device="cpu", surrogate=None, num_classes=10,
                on_result=None) -> list[CheckResult]:
    """All checks on (x uint8, y); ``on_result(result)`` is called as each one finishes."""
    model = model.to(device).eval()
    plan = [
        lambda: check_deterministic(model, x, y, settings, device),
        lambda: check_logits(model, x, y, settings, device),
        lambda: check_gradients(model, x, y, settings, device),
        lambda: check_fgsm_vs_pgd(model, x, y, settings, device),
        lambda: check_restarts(model, x, y, settings, device),
        lambda: check_long_pgd(model, x, y, settings, device),
        lambda: check_unbounded(model, x, y, settings, device),
        lambda: check_transfer(model, x, y, settings, device, surrogate),
        lambda: check_graybox(model, x, y, settings, device),
        lambda: check_autoattack(model, x, y, settings, device, num_classes),
    ]
    results = []
    for run_check in plan:
        result = run_check()
        if result is None:
            continue
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def check_run(run_dir, *, eps: float | None = None, steps: int = 40, long_steps: int = 1000, restarts: int = 5,
              limit: int = 0, surrogate: str | None = None, surrogate_epochs: int = 5, autoattack: bool = True,
              autoattack_limit: int = 200, tol: float = 0.05, device="cpu", data_root=None,
              on_result=None) -> list[CheckResult]:
    """The `robustgan check` command: every check on a run's defended model, saved to
    <run>/check.json. ``surrogate`` is a run directory, or 'auto' to train a standard model
    of the same backbone into <run>/surrogate (independent seed) first."""
    run = RunDir(run_dir)
    cfg, model, x, y = open_run(run_dir, limit=limit, data_root=data_root, device=device)
    eps = eps if eps is not None else default_eps(cfg)
    if not eps > 0:
        raise RobustganError("check needs an eps: pass --eps (the run has no eval or training eps)")
    surrogate_model = None
    if surrogate == "auto":
        sub = clean_config(cfg, surrogate_epochs, cfg.train.seed + 1000)  # an independent seed
        surrogate_model = load_model(ensure_trained(sub, run.path / "surrogate", data_root=data_root))
    elif surrogate:
        surrogate_model = load_model(Path(surrogate))
    settings = CheckSettings(eps=eps, steps=steps, long_steps=long_steps, restarts=restarts, autoattack=autoattack,
                             autoattack_limit=autoattack_limit, tol=tol)
    results = check_model(model, x, y, settings, device, surrogate_model, geometry_for(cfg.data).num_classes,
                          on_result)
    report = {"eps": eps, "n": len(y), "tol": tol, "steps": steps, "long_steps": long_steps, "restarts": restarts,
              "passed": all(r.passed for r in results), "checks": [r.as_dict() for r in results]}
    atomic_write(run.file("check.json"), json.dumps(report, indent=1))
    return results
