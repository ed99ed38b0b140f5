"""FGSM and PGD in the L-inf or the L2 threat model (``threat.Norm``), on pixels in [0, 1]. In L2
the sign step becomes the normalized gradient (FGM, Miyato et al. 2017; L2 PGD, Madry et al. 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustgan.attacks.losses import LOSSES
from robustgan.attacks.registry import AttackArgs, default_step_size, register_attack
from robustgan.attacks.threat import AttackError, attack_mode, check_eps, check_images, get_norm, loss_and_grad

PGD_LOSSES = ("ce", "ce-unsaturated", "dlr", "kl")  # the untargeted losses of LOSSES


def _keep_better(best, fooled, loss, x_new, fooled_new, loss_new):
    """Per sample, the better of two points: a misclassified one wins, and among points
    that are both misclassified the earlier (``best``) one; otherwise the higher loss."""
    better = (fooled_new & ~fooled) | (~fooled & ~fooled_new & (loss_new > loss))
    return (torch.where(better[:, None, None, None], x_new, best), fooled | fooled_new,
            torch.where(better, loss_new, loss))


def _score(model, x_adv, y, loss="ce"):
    """(misclassified, loss) per sample, without gradients."""
    with torch.no_grad():
        logits = model(x_adv).float()
        return logits.argmax(1) != y, LOSSES[loss](logits, y, None)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, check: bool = True,
         norm: str = "linf") -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf; in L2 (``norm="l2"``) the Fast
    Gradient Method, x + eps * grad / ||grad||_2.

    x: (N, C, H, W) in [0, 1]; y: (N,) int64. Returns clip(x + eps * sign(grad), 0, 1), or
    x itself for the samples x already fools or where the step lowered the loss (the best
    of the two iterates, as for PGD). The model runs in eval mode with frozen parameters;
    both are restored afterwards. ``check=False`` skips the input check (a host sync)."""
    eps, threat = check_eps(eps, norm), get_norm(norm)
    if check:
        check_images(x, y)
    with attack_mode(model):
        x = x.detach()
        x_leaf = x.clone().requires_grad_(True)
        loss, grad, logits = loss_and_grad(model, x_leaf, y, logits=True)
        radius = threat.unbounded(x) if math.isinf(eps) else eps
        x_adv = threat.project(x + radius * threat.direction(grad), x, eps)
        return _keep_better(x, logits.argmax(1) != y, loss, x_adv, *_score(model, x_adv, y))[0]


def _start(x, eps, random_start, noise, proj, threat):
    """The first PGD iterate: x, or x + eps * noise (a point of the unit ball) projected by ``proj``."""
    x_adv = x.clone()
    if random_start and not math.isinf(eps):
        noise = threat.noise(x, None) if noise is None else noise
        proj(x_adv.add_(noise, alpha=eps))
    return x_adv


def _pgd_last(model, x, y, eps, steps, step_size, random_start, noise=None, loss_name="ce", threat=get_norm("linf")):
    """One PGD run (Madry et al. 2018, paper 000 eq. 2), x <- Proj(x + a * sign(grad)) (in L2,
    grad / ||grad||_2); returns the last iterate. The training attack: no host sync."""
    proj = threat.projection(x, eps)
    x_adv = _start(x, eps, random_start, noise, proj, threat)
    x_adv.requires_grad_(True)
    for _ in range(steps):
        _, grad = loss_and_grad(model, x_adv, y, loss=loss_name)
        with torch.no_grad():  # step and projection in place on the leaf
            proj(x_adv.add_(threat.direction(grad, inplace=True), alpha=step_size))
    return x_adv.detach()


def _merge_at(keep: tuple, idx: torch.Tensor, *point) -> None:
    """``keep`` (best x, fooled, loss) at rows ``idx`` becomes the better of it and ``point``, in place."""
    for kept, new in zip(keep, _keep_better(*(t[idx] for t in keep), *point)):
        kept[idx] = new


def _pgd_best(model, x, y, eps, steps, step_size, random_start, noise=None, loss_name="ce",
              threat=get_norm("linf")) -> tuple[torch.Tensor, ...]:
    """One PGD run keeping each sample's best iterate: (the first misclassified iterate, else
    the highest-loss one; misclassified; loss). A sample stops being attacked once an iterate
    is misclassified (its result cannot change; in eval mode the others' steps do not depend
    on it), which saves the cost of fooled points and changes no sample's result (up to the
    kernels' determinism across batch sizes)."""
    proj = threat.projection(x, eps)
    x_adv = _start(x, eps, random_start, noise, proj, threat)
    keep = (x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device),
            torch.full((len(x),), -math.inf, device=x.device))
    live = torch.arange(len(x), device=x.device)  # samples still attacked
    for _ in range(steps):
        point = x_adv[live].requires_grad_(True)
        loss, grad, logits = loss_and_grad(model, point, y[live], logits=True, loss=loss_name)
        point = point.detach()
        _merge_at(keep, live, point, logits.argmax(1) != y[live], loss)
        with torch.no_grad():
            x_adv[live] = proj[live](point + step_size * threat.direction(grad))
        live = live[~keep[1][live]]
        if not len(live):
            break
    if len(live):  # the last step's iterate, not yet scored
        _merge_at(keep, live, x_adv[live], *_score(model, x_adv[live], y[live], loss_name))
    return keep


def _check_pgd(steps, step_size, restarts, loss, best, noise) -> None:
    """One-line errors for PGD settings that cannot run."""
    if int(steps) <= 0:
        raise AttackError(f"PGD steps must be positive, got {steps}")
    if not step_size > 0:
        raise AttackError(f"PGD step size must be positive, got {step_size}")
    if int(restarts) <= 0:
        raise AttackError(f"PGD restarts must be positive, got {restarts}")
    if loss not in PGD_LOSSES:
        raise AttackError(f"PGD loss must be one of {', '.join(PGD_LOSSES)}, got {loss!r}")
    if (loss == "kl" or noise is not None) and (best or restarts != 1):
        raise AttackError("PGD's KL loss and a given start take one start and the last iterate (best=False)")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40, step_size: float | None = None,
        random_start: bool = True, restarts: int = 1, *, best: bool = True, seed: int | None = None,
        ids: torch.Tensor | None = None, loss: str = "ce", noise: torch.Tensor | None = None,
        check: bool = True, norm: str = "linf") -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018), L-inf or (``norm="l2"``) L2, steps along
    the sign of the gradient or its unit L2 direction, on the cross-entropy (or with
    ``loss="dlr"`` the scale-invariant DLR loss of Croce & Hein 2020, eq. 6, or with
    ``loss="ce-unsaturated"`` the cross-entropy's direction without float32 saturation, or with
    ``loss="kl"`` TRADES' KL to the clean prediction, y then being the clean logits (N, K)).

    x: (N, C, H, W) in [0, 1]; y: (N,) int64; eps in pixel scale, ``float('inf')`` for the
    unbounded attack (only the [0, 1] box is kept). Each sample keeps its best iterate (the
    first misclassified, else the highest loss) over all steps and restarts, and is no longer
    attacked once misclassified (with ``seed``, that changes no result, only the cost); ``best=False``
    returns the last iterate of one start instead (Madry et al.'s training attack, one
    forward pass cheaper per step). The model runs in eval mode with frozen parameters;
    both are restored afterwards. Returns x_adv with ||x_adv - x|| <= eps in ``norm`` and x_adv in
    [0, 1]. Random starts come from torch's global generator, or with ``seed`` from one
    stream per sample (its test-set index in ``ids``), independent of batch and shard, or are
    x + eps * ``noise`` (one start, ``best=False``: e.g. TRADES' x + 0.001 N(0, I)); random starts
    are uniform in the ball of ``norm``.
    ``steps`` defaults to the papers' PGD-40, ``step_size`` to 2.5 eps / steps (``default_step_size``;
    unbounded 0.01, in L2 times sqrt(C H W)). ``check=False`` skips the input check (a host sync)."""
    eps, threat = check_eps(eps, norm), get_norm(norm)
    if check:
        check_images(x, y)
    if step_size is None and int(steps) > 0:  # unbounded: 0.01, in L2 that L-inf step's length, 0.01 sqrt(C H W)
        step_size = default_step_size(eps, steps) * (threat.unbounded(x) if math.isinf(eps) else 1.0)
    _check_pgd(steps, step_size, restarts, loss, best, noise)
    x = x.detach()
    with attack_mode(model):
        if not best and restarts == 1:
            if noise is None and seed is not None:
                noise = threat.noise(x, seed, ids, stream=0)
            return _pgd_last(model, x, y, eps, int(steps), float(step_size), random_start, noise, loss, threat)
        if loss == "dlr" and len(x):
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            if classes < 3:  # eq. 6 reads the third-largest logit
                raise AttackError(f"PGD with the DLR loss needs at least 3 classes, got {classes}")
        ids = torch.arange(len(x)) if ids is None else ids.cpu()
        keep = None
        for r in range(int(restarts)):  # a restart attacks only the samples every earlier run failed on
            todo = torch.arange(len(x), device=x.device) if keep is None else (~keep[1]).nonzero()[:, 0]
            if not len(todo):
                break
            noise = None if seed is None else threat.noise(x[todo], seed, ids[todo.cpu()], stream=r)
            run = _pgd_best(model, x[todo], y[todo], eps, int(steps), float(step_size), random_start, noise, loss, threat)
            if keep is None:
                keep = run
            else:
                _merge_at(keep, todo, *run)
        return keep[0]


@register_attack("fgsm", norms=("linf", "l2"), help="one signed-gradient step (Goodfellow et al. 2015; in L2 one "
                 "normalized-gradient step, FGM)")
def _fgsm_attack(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
    return fgsm(model, x, y, eps, check=args.check, norm=args.norm)


def _register_pgd(name: str, loss: str, help: str) -> None:
    def run(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
        return pgd(model, x, y, eps, args.steps, args.step_size, True,
                   args.restarts, seed=args.seed, ids=args.ids, loss=loss, check=args.check, norm=args.norm)

    register_attack(name, steps=40, key=("steps", "step_size", "restarts"), norms=("linf", "l2"), help=help)(run)


_register_pgd("pgd", "ce", "PGD on the cross-entropy, random start (Madry et al. 2018): the papers' protocol")
_register_pgd("pgd-dlr", "dlr", "PGD on the scale-invariant DLR loss (Croce & Hein 2020, eq. 6)")
_register_pgd("pgd-unsaturated", "ce-unsaturated", "PGD on the cross-entropy's direction without float32 saturation")
