"""APGD, Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Sec. 3, Alg. 1), L-inf or L2, pixels in [0, 1].

Written here from the paper. Per sample: the step starts at eta = 2 eps; every step is
eq. (3), a steepest-ascent step z = P(x_k + eta d(grad)), d the sign in L-inf and grad / ||grad||_2
in L2 (``threat.Norm.direction``; P the projection onto the ball and the box), followed by momentum
x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with a = 0.75; at the checkpoints
w_j (Sec. 3.2) the step is halved and the iterate restarted from the best point when
fewer than rho = 75% of the steps since the last checkpoint raised the loss (condition 1)
or when the step was not halved at the last checkpoint and the best loss has not moved
since (condition 2). Each sample returns its best iterate: the first misclassified one,
else the one with the highest loss.

Losses: cross-entropy; the difference of logits ratio DLR (eq. 6), invariant to shifting
and scaling the logits, so a saturated softmax cannot hide its gradient; and targeted DLR
(Sec. 4, the loss of APGD-T) towards a given ``target`` per sample, or the
``target_rank``-th most likely other class of the clean image. Our reading where the paper is open: one gradient evaluation per step
(``steps`` evaluations in all, the first at the start point); after a restart from the best
point the momentum term starts at zero; samples that are misclassified stop being attacked
(their result cannot change), which saves cost and changes no sample's result. For the
ensemble, rows can attack one point side by side (``groups``: one fooled row stops the
others) and share its budget by successive halving (``prune``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from robustgan.attacks.losses import LOSSES
from robustgan.attacks.registry import AttackArgs, register_attack
from robustgan.attacks.threat import AttackError, Norm, attack_mode, check_eps, check_images, get_norm

ALPHA = 0.75  # momentum weight of eq. (3)
RHO = 0.75  # condition 1: fraction of steps since the last checkpoint that must raise the loss


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) where the step size is reconsidered:
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(pj * steps, 6)) for pj in p})  # round: 0.57 * 100 is 57.000000001


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{i != y} z_i - z_y: positive exactly when the sample is misclassified."""
    return logits.scatter(1, y[:, None], -math.inf).max(1).values - logits.gather(1, y[:, None])[:, 0]


def target_order(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the classes from most to least likely, the true class y last: column
    r - 1 is the rank-r target (rank 1 = the runner-up)."""
    return logits.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)


@dataclass
class APGDResult:
    x_adv: torch.Tensor  # (N, C, H, W): each sample's best iterate
    fooled: torch.Tensor  # (N,) bool: x_adv is misclassified
    grad_evals: int  # forward-backward passes, summed over samples


def rank_in_group(groups: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Each row's place (0 = highest score) among the rows of its group; of two equal scores
    the earlier row comes first."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    place = torch.empty_like(order)
    place[order] = torch.arange(len(order), device=order.device) - torch.searchsorted(sorted_groups, sorted_groups)
    return place


def _gives_up(best_margin: torch.Tensor, clean_margin: torch.Tensor, ratio: float) -> torch.Tensor:
    """Rows still far from fooled: whose best margin has not closed more than 1 - ``ratio`` of
    the clean logit gap (best / clean margin > ratio, both negative on a correct point; a ratio
    of margins, so scaling the logits moves nothing). A clean-misclassified row never gives up."""
    return (clean_margin < 0) & (best_margin < ratio * clean_margin)


def _stopping(hit, groups, best_loss, quota, early_stop) -> torch.Tensor:
    """The rows that stop before the next step: with early stop the fooled ones (their result
    cannot change) and their groups' other rows (nor can their point's); with a successive-halving
    ``quota``, all but the ``quota`` rows of each group with the highest best loss."""
    stop = hit if early_stop else torch.zeros_like(hit)
    if groups is not None:
        stop = torch.isin(groups, groups[stop])
    if quota is not None:
        stop = stop | (rank_in_group(groups, best_loss) >= quota)
    return stop


def _apgd_once(model, x, y, target, eps, start, steps, loss_fn, early_stop, groups, prune, eot=1,
               give_up=None, norm: Norm = get_norm("linf")) -> APGDResult:
    """One run of Alg. 1 from ``start`` on a batch; eps is one value per sample. Rows of one
    ``groups`` value attack one point side by side (``apgd_run``). With ``eot`` > 1 the loss
    and its gradient are averaged over that many forward passes (expectation over
    transformation, Athalye et al. 2018, for randomized models). ``give_up``: (ratios, clean
    margins): after the j-th checkpoint the rows still far from fooled at ``ratios[j-1]``
    (``_gives_up``) stop. One function on purpose: its state is the algorithm's, and splitting
    it would pass fourteen per-sample tensors between the pieces."""
    proj = norm.projection(x, eps)  # onto each row's ball and the box (rows dropped with ``live``)
    eta = 2 * eps.view(-1, 1, 1, 1).to(x.dtype)
    out = start.clone()
    out_loss = torch.full((len(x),), -math.inf, device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    live = torch.arange(len(x), device=x.device)  # batch positions still attacked

    def evaluate(point):
        point = point.detach().requires_grad_(True)
        value_sum, grad_sum = 0, 0
        with torch.enable_grad():
            for _ in range(eot):  # the last draw's logits decide "misclassified", as AutoAttack's rand version
                logits = model(point).float()
                value = loss_fn(logits, y[live], None if target is None else target[live])
                (grad,) = torch.autograd.grad(value.sum(), point)
                value_sum, grad_sum = value_sum + value.detach(), grad_sum + grad
        if eot == 1:
            return value.detach(), grad, logits.detach()
        return value_sum / eot, grad_sum / eot, logits.detach()

    def record(hit):  # misclassified: this iterate is the sample's result
        out[live[hit]], out_loss[live[hit]], fooled[live[hit]] = cur[hit].detach(), loss[hit], True

    ratios, clean_margin = give_up if give_up is not None else ((), None)
    cur = start[live]
    prev = cur
    loss, grad, logits = evaluate(cur)
    hit = logits.argmax(1) != y[live]
    record(hit)
    best_x, best_loss, best_grad = cur.clone(), loss.clone(), grad
    best_margin = margin(logits, y[live])
    evals = len(live) * eot
    marks = checkpoints(steps)
    mark = 1
    success = torch.zeros_like(loss)
    reduced_last = torch.zeros_like(loss, dtype=torch.bool)
    best_last = best_loss.clone()
    quota, far = None, None
    for k in range(1, steps):
        stop = _stopping(hit, None if groups is None else groups[live], best_loss, quota, early_stop)
        if far is not None:
            stop = stop | far
        quota, far = None, None
        if stop.any():
            left = stop & ~fooled[live]  # stopped unfooled: the best point so far is the result
            out[live[left]], out_loss[live[left]] = best_x[left].detach(), best_loss[left]
            keep = ~stop
            (live, cur, prev, loss, grad, best_x, best_loss, best_grad, best_margin, success, reduced_last, best_last,
             eta, proj) = (t[keep] for t in (live, cur, prev, loss, grad, best_x, best_loss, best_grad, best_margin,
                                             success, reduced_last, best_last, eta, proj))
            if not len(live):
                break
        with torch.no_grad():  # eq. (3)
            z = proj(cur + eta * norm.direction(grad))
            step = 1.0 if k == 1 else ALPHA  # the first step has no momentum (Alg. 1, line 3)
            prev, cur = cur, proj(cur + step * (z - cur) + (1 - step) * (cur - prev))
        new_loss, grad, logits = evaluate(cur)
        hit = logits.argmax(1) != y[live]
        best_margin = torch.maximum(best_margin, margin(logits, y[live]))
        evals += len(live) * eot
        success += (new_loss > loss).float()
        loss = new_loss
        record(hit & ~fooled[live])  # the first misclassified iterate
        better = loss > best_loss
        best_x = torch.where(better[:, None, None, None], cur, best_x)
        best_grad = torch.where(better[:, None, None, None], grad, best_grad)
        best_loss = torch.where(better, loss, best_loss)
        if mark < len(marks) and k == marks[mark]:  # Sec. 3.2: halve the step, restart from the best point
            since = marks[mark] - marks[mark - 1]
            reduce = (success < RHO * since) | (~reduced_last & (best_loss <= best_last))
            eta = torch.where(reduce[:, None, None, None], eta / 2, eta)
            back = reduce[:, None, None, None]
            cur, prev = torch.where(back, best_x, cur), torch.where(back, best_x, prev)
            grad, loss = torch.where(back, best_grad, grad), torch.where(reduce, best_loss, loss)
            reduced_last, best_last = reduce, best_loss.clone()
            success = torch.zeros_like(success)
            quota = prune[mark - 1] if prune is not None and mark <= len(prune) else None
            if mark <= len(ratios):
                far = _gives_up(best_margin, clean_margin[live], ratios[mark - 1])
            mark += 1
    left = ~fooled[live]
    out[live[left]], out_loss[live[left]] = best_x[left].detach(), best_loss[left]
    return APGDResult(out, fooled, evals), out_loss


def _target(model, x, y, loss, target, target_rank):
    """The targeted loss's target per sample (``target``, else each clean image's
    ``target_rank``-th most likely other class); None for the other losses. Checks that the
    DLR losses have the classes they need."""
    if loss != "dlr-targeted":
        target = None
    if target is None and loss in ("dlr-targeted", "dlr"):
        with torch.no_grad():
            logits = model(x).float()
        need = 4 if loss == "dlr-targeted" else 3
        if logits.shape[1] < need:
            raise AttackError(f"APGD with {loss} loss needs at least {need} classes, got {logits.shape[1]}")
        if loss == "dlr-targeted":
            rank = 1 if target_rank is None else int(target_rank)
            if not 1 <= rank < logits.shape[1]:
                raise AttackError(f"target_rank must be in 1..{logits.shape[1] - 1}, got {target_rank}")
            target = target_order(logits, y)[:, rank - 1]
    return target


def apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *, steps: int = 100, loss: str = "ce",
             target_rank: int | None = None, target: torch.Tensor | None = None, restarts: int = 1,
             seed: int | torch.Tensor = 0, x_init: torch.Tensor | None = None, ids: torch.Tensor | None = None,
             early_stop: bool = True, groups: torch.Tensor | None = None,
             prune: tuple[int, ...] | None = None, eot: int = 1,
             give_up: tuple[tuple[float, ...], torch.Tensor] | None = None, norm: str = "linf") -> APGDResult:
    """APGD on a batch with everything the evaluation engine needs: per-sample eps (a number
    or an (N,) tensor), a warm start ``x_init`` for the first run, the samples' test-set
    indices ``ids`` and seeds (a number or one per sample: their random starts do not depend
    on the batch), whether each sample was fooled, and the number of gradient evaluations.
    The targeted loss aims at ``target`` (N,) when given, else at each clean image's
    ``target_rank``-th most likely other class.

    ``groups`` (N,): rows with one value attack the same point (one target each); with early
    stop, once one of them is fooled the others stop. ``prune``: successive halving over a
    group's rows (Jamieson & Talwalkar 2016): after the j-th step-size checkpoint (Sec. 3.2)
    only the ``prune[j-1]`` rows of each group with the highest best loss go on; the others
    keep their best point. ``eot``: gradients averaged over that many draws of a randomized
    model (each counted as a gradient evaluation). ``give_up`` (ratios, clean margins (N,)):
    after the j-th checkpoint, the rows whose best margin has closed no more than 1 - ratios[j-1]
    of their clean margin stop (their best point is their result); with ``x_init``, only the run
    from it gives up, its random restarts run in full. ``norm``: the threat model, "linf" or "l2"
    (``threat.NORMS``). Inputs are not checked here."""
    if loss not in LOSSES:
        raise AttackError(f"APGD loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if int(steps) <= 0 or int(restarts) <= 0:
        raise AttackError(f"APGD steps and restarts must be positive, got {steps} and {restarts}")
    if prune is not None and (groups is None or min(prune, default=1) < 1):
        raise AttackError(f"prune needs groups and quotas of at least 1, got {prune}")
    x, y = x.detach(), y.detach()
    threat = get_norm(norm)
    eps = threat.radius(eps, x)  # inf: the radius whose ball holds the [0, 1] box
    with attack_mode(model):
        target = _target(model, x, y, loss, target, target_rank)
        best = APGDResult(x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device), 0)
        best_loss = torch.full((len(x),), -math.inf, device=x.device)
        todo = torch.arange(len(x), device=x.device)
        sample_ids = torch.arange(len(x)) if ids is None else ids
        for r in range(int(restarts)):
            if r == 0 and x_init is not None:
                start = x_init.detach()[todo]
            else:
                seeds = seed[todo.cpu()] if isinstance(seed, torch.Tensor) else seed
                noise = threat.noise(x[todo], seeds, sample_ids[todo.cpu()], stream=r)
                start = threat.project(x[todo] + eps[todo].view(-1, 1, 1, 1) * noise, x[todo], eps[todo])
            got, got_loss = _apgd_once(model, x[todo], y[todo], None if target is None else target[todo], eps[todo],
                                       start, int(steps), LOSSES[loss], early_stop,
                                       None if groups is None else groups[todo], prune, int(eot),
                                       None if give_up is None or (r > 0 and x_init is not None)
                                       else (give_up[0], give_up[1][todo]), threat)
            better = got.fooled | (got_loss > best_loss[todo])
            idx = todo[better]
            best.x_adv[idx], best.fooled[idx], best_loss[idx] = got.x_adv[better], got.fooled[better], got_loss[better]
            best.grad_evals += got.grad_evals
            done = best.fooled if groups is None or not early_stop else torch.isin(groups, groups[best.fooled])
            todo = todo[~done[todo]]
            if not len(todo):
                break
        return best


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 100, loss: str = "ce",
         target_rank: int | None = None, restarts: int = 1, seed: int = 0, *, check: bool = True,
         norm: str = "linf") -> torch.Tensor:
    """APGD (Croce & Hein 2020), L-inf or (``norm="l2"``) L2. x: (N, C, H, W) in [0, 1]; y: (N,)
    int64; eps in pixel scale (inf: only the [0, 1] box). ``loss``: "ce", "dlr" (eq. 6) or
    "dlr-targeted" towards each image's ``target_rank``-th most likely other class (1 by
    default). ``restarts`` random starts; each sample keeps its best iterate (the first
    misclassified, else the highest loss). The model runs in eval mode with frozen
    parameters; both are restored. Returns x_adv within the eps-ball and [0, 1]."""
    eps = check_eps(eps, norm)
    if check:
        check_images(x, y)
    if eps == 0:
        return x.detach().clone()
    return apgd_run(model, x, y, eps, steps=steps, loss=loss, target_rank=target_rank, restarts=restarts,
                    seed=seed, norm=norm).x_adv


def _register_apgd(loss: str, help: str) -> None:
    def run(model, x, y, eps, args: AttackArgs) -> torch.Tensor:
        return apgd_run(model, x, y, eps, steps=args.steps, loss=loss, restarts=args.restarts, seed=args.seed or 0,
                        ids=args.ids, norm=args.norm).x_adv

    register_attack(f"apgd-{loss}", steps=100, key=("steps", "restarts"), norms=("linf", "l2"), help=help)(run)


_register_apgd("ce", "APGD on the cross-entropy (Croce & Hein 2020, Alg. 1)")
_register_apgd("dlr", "APGD on the DLR loss (Croce & Hein 2020, eq. 6)")
