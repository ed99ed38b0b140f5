"""The threat models, separate from the attack loops (as in MadryLab/robustness): the L-inf and
L2 balls (``Norm``: checking eps, the projection onto the eps-ball intersected with [0, 1], the
steepest-ascent step, random starts), the model context every attack runs in (eval mode, every module's own mode restored), and the classifier as every attack
sees it (``ClassScores``: the user's output convention and dtype, the labels checked)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.nn as nn

from robustgan.attacks.losses import LOSSES
from robustgan.errors import RobustganError


class AttackError(RobustganError, ValueError):
    """Invalid attack settings (eps, steps, step size) or inputs (shape, NaN, range)."""


def check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse inputs an attack would silently get wrong: x must be float (N, C, H, W),
    finite and in [0, 1]; y int64 (N,). One host sync; the training loop skips it."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        hint = " (divide uint8 images by 255)" if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 else ""
        raise AttackError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {got}{hint}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.int64:
        got = f"shape {tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise AttackError(f"labels must be an int64 tensor of shape ({x.shape[0]},), got {got}")
    if x.numel():
        lo, hi, finite = torch.stack([x.min().float(), x.max().float(), torch.isfinite(x).all().float()]).tolist()
        if not finite:
            raise AttackError("images contain NaN or infinite values")
        if lo < 0 or hi > 1:
            raise AttackError(f"images must be in [0, 1] (pixel scale), got values in [{lo:.3g}, {hi:.3g}]")


def check_eps(eps: float, norm: str = "linf") -> float:
    """eps as a float, checked for the threat model ``norm`` (``Norm.check_eps``)."""
    return get_norm(norm).check_eps(eps)


def ball(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of {x' : |x' - x|_inf <= eps, 0 <= x' <= 1}. ``eps`` is one
    number or one per sample (shape (N,)); inf keeps only the [0, 1] box."""
    if isinstance(eps, torch.Tensor):
        eps = eps.to(x.dtype).view(-1, *[1] * (x.ndim - 1))
    elif math.isinf(eps):
        return torch.zeros_like(x), torch.ones_like(x)
    return (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)


def _per_sample(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """eps as an (N, 1, 1, 1) tensor of x's dtype: one number, or one per sample (any shape of N values)."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device).reshape(-1)
    return eps.expand(len(x)).reshape(-1, *[1] * (x.ndim - 1))


def l2_sizes(delta: torch.Tensor) -> torch.Tensor:
    """||delta_i||_2 per sample (N,), in float32 or wider."""
    return delta.flatten(1).float().norm(dim=1)


class Projection(ABC):
    """The projection of one batch (x (N, C, H, W), eps per sample) onto its balls intersected
    with the box, what it needs computed once: ``proj(z)`` projects z in place and returns it (z
    a tensor of its own: never x or a view of it), ``proj[keep]`` is the projection of the rows
    ``keep`` (an attack dropping finished rows)."""

    @abstractmethod
    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def __getitem__(self, keep) -> Projection: ...


class BoxBounds(Projection):
    """L-inf: per pixel, the bounds max(x - eps, 0) and min(x + eps, 1)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        self.lo, self.hi = lo, hi

    def __call__(self, z):
        return z.clamp_(self.lo, self.hi)

    def __getitem__(self, keep):
        return BoxBounds(self.lo[keep], self.hi[keep])


class L2Scaling(Projection):
    """L2: delta = z - x scaled onto the ball where it is longer than eps, then the box."""

    def __init__(self, x: torch.Tensor, radius: torch.Tensor):
        self.x, self.radius = x, radius  # radius (N, 1, 1, 1), inf where unbounded

    def __call__(self, z):
        delta = z.sub_(self.x)
        sizes = l2_sizes(delta).to(z.dtype).view_as(self.radius)
        scale = torch.where(sizes > self.radius, self.radius / sizes.clamp(min=1e-12), torch.ones_like(sizes))
        return delta.mul_(scale).add_(self.x).clamp_(0, 1)

    def __getitem__(self, keep):
        return L2Scaling(self.x[keep], self.radius[keep])


class Norm(ABC):
    """One threat model: the ball {x' : ||x' - x|| <= eps} intersected with the [0, 1] box, on
    images (N, C, H, W). ``projection(x, eps)`` maps points into it (``project`` once),
    ``direction`` is the unit step of steepest ascent of a gradient, ``noise`` a random point of
    the unit ball (a random start is ``project(x + eps * noise)``), ``size`` the distance that is
    bounded. eps inf is the box alone: the ball of radius ``unbounded`` holds it."""

    name = ""
    title = ""  # for people: "L-inf", "L2"

    @abstractmethod
    def check_eps(self, eps: float) -> float:
        """eps as a float; an AttackError naming the valid range otherwise."""

    @abstractmethod
    def unbounded(self, x: torch.Tensor) -> float:
        """The radius whose ball around any image of x's shape holds the whole [0, 1] box."""

    @abstractmethod
    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """||delta_i|| per sample (N,): the distance the ball bounds."""

    @abstractmethod
    def projection(self, x: torch.Tensor, eps: float | torch.Tensor) -> Projection:
        """The projection onto the balls of radius ``eps`` (one number, or one per sample) around x."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """x_adv (not changed) projected onto the ball of radius eps around x and the box."""
        return self.projection(x, eps)(x_adv.clone())

    @abstractmethod
    def direction(self, grad: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The steepest-ascent step of unit norm along ``grad`` (in place on it when ``inplace``)."""

    @abstractmethod
    def noise(self, like: torch.Tensor, seed: int | torch.Tensor | None, ids: torch.Tensor | None = None,
              stream: int = 0) -> torch.Tensor:
        """Random points of the unit ball shaped like ``like``, per sample from the stream of
        (seed, stream, its index ``ids``) as ``sample_noise``; seed None: torch's generator."""

    def radius(self, eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """eps per sample (N,) with inf replaced by ``unbounded``: the radius the attacks step in."""
        eps = torch.as_tensor(eps, dtype=torch.float32, device=x.device).expand(len(x)).clone()
        return torch.where(torch.isinf(eps), torch.full_like(eps, self.unbounded(x)), eps)


class LInf(Norm):
    """|x' - x|_inf <= eps: every pixel moves at most eps (the papers' threat model)."""

    name, title = "linf", "L-inf"

    def check_eps(self, eps: float) -> float:
        eps = float(eps)
        if math.isnan(eps) or eps < 0 or (eps > 1 and not math.isinf(eps)):
            hint = " (an L2 radius? evaluate in the L2 threat model, norm l2)" if eps > 1 else ""
            raise AttackError(f"eps must be in [0, 1] (pixel scale) or inf for the unbounded attack, got {eps}{hint}")
        return eps

    def unbounded(self, x: torch.Tensor) -> float:
        return 1.0

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def projection(self, x, eps):
        return BoxBounds(*ball(x, eps))

    def direction(self, grad, inplace=False):
        return grad.sign_() if inplace else grad.sign()

    def noise(self, like, seed, ids=None, stream=0):
        if seed is None:
            return torch.empty_like(like).uniform_(-1, 1)
        return sample_noise(like, seed, ids, stream)


class L2(Norm):
    """||x' - x||_2 <= eps: the Euclidean distance over all C * H * W pixels is at most eps.
    Radii are not capped at 1: the distance between two images in [0, 1] reaches sqrt(C H W).

    The projection scales delta = x' - x onto the ball, then clips to the box. Clipping moves
    every pixel towards x's side of the box (x is in it), so no |delta_i| grows and the point
    stays in the ball: a point of the intersection (not always its nearest point, as in Croce
    & Hein 2020's L2 APGD)."""

    name, title = "l2", "L2"

    def check_eps(self, eps: float) -> float:
        eps = float(eps)
        if math.isnan(eps) or eps < 0:
            raise AttackError(f"L2 eps must be >= 0 (pixel scale, the Euclidean distance over all pixels) or inf, "
                              f"got {eps}")
        return eps

    def unbounded(self, x: torch.Tensor) -> float:
        return math.sqrt(x[0].numel()) if len(x) else 1.0

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return l2_sizes(delta)

    def projection(self, x, eps):
        return L2Scaling(x, _per_sample(eps, x))

    def direction(self, grad, inplace=False):
        sizes = l2_sizes(grad).to(grad.dtype).clamp(min=1e-12).view(-1, *[1] * (grad.ndim - 1))
        return grad.div_(sizes) if inplace else grad / sizes

    def noise(self, like, seed, ids=None, stream=0):
        # uniform in the unit d-ball: the first d coordinates of a uniform point of the unit
        # (d+2)-sphere (a normalized Gaussian in d + 2 dimensions; Voelker et al. 2017)
        d = like[0].numel()
        if seed is None:
            g = torch.randn(len(like), d + 2, device=like.device)
        else:
            g = per_sample_rows(len(like), seed, ids, stream, lambda gen: torch.randn(d + 2, generator=gen))
        g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return g[:, :d].reshape(like.shape).to(like.device, like.dtype)


NORMS = {norm.name: norm for norm in (LInf(), L2())}
DEFAULT_NORM = "linf"


def get_norm(name: str) -> Norm:
    """The threat model ``name`` ("linf" or "l2"); an AttackError naming both otherwise."""
    if name not in NORMS:
        raise AttackError(f"unknown norm {name!r}; choose {' or '.join(NORMS)}")
    return NORMS[name]


def point_seed(seed: int, stream: int, point: int) -> int:
    """The seed of one test point's random stream: fixed by (seed, stream, the point's index in
    the test set), so its draws do not depend on its batch, shard or the other points attacked."""
    return ((seed * 1_000_003 + stream) * 10_000_019 + point) % (1 << 63)


def per_sample_rows(n: int, seed: int | torch.Tensor, ids: torch.Tensor | None, stream: int, draw) -> torch.Tensor:
    """(n, ...) rows, row i ``draw(generator)`` from the stream of (seed, stream, ids[i])
    (``point_seed``); ``seed``: one number or one per sample."""
    ids = torch.arange(n) if ids is None else ids.cpu()
    seeds = seed.reshape(-1).tolist() if isinstance(seed, torch.Tensor) else [seed] * len(ids)
    gen = torch.Generator()
    rows = []
    for s, i in zip(seeds, ids.tolist(), strict=True):
        gen.manual_seed(point_seed(s, stream, i))
        rows.append(draw(gen))
    return torch.stack(rows) if rows else torch.empty(0)


def sample_noise(like: torch.Tensor, seed: int | torch.Tensor, ids: torch.Tensor | None = None,
                 stream: int = 0) -> torch.Tensor:
    """Uniform noise in [-1, 1] shaped like ``like``, drawn per sample from a stream fixed by
    (seed, stream, the sample's index in the test set ``ids``): a sample's random start does
    not depend on its batch, shard or which other samples are still being attacked, so a
    sharded or early-stopped evaluation draws what a single process would. ``seed``: one
    number, or one per sample."""
    noise = per_sample_rows(len(like), seed, ids, stream, lambda gen: torch.rand(like.shape[1:], generator=gen))
    noise = noise if len(like) else torch.empty(like.shape)
    return noise.to(like.device, like.dtype).mul_(2).sub_(1)


@contextmanager
def no_param_grads(model: nn.Module):
    """Parameters get no gradient inside the block; their requires_grad flags are restored."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else its buffers) are: the default device of the
    evaluation functions; the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


RANDOM_TOL = 1e-5  # two eval-mode passes further apart than this: the model is randomized


def output_spread(model: nn.Module, x: torch.Tensor) -> float:
    """max |f(x) - f(x)| over two eval-mode passes over ``x`` (uint8 or [0, 1]); every module's
    mode is restored. The measurement of the randomness test (``evaluation.engine.randomness``)."""
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    net = classifier(model)
    with eval_mode(model), torch.no_grad():
        return (net(x).float() - net(x).float()).abs().max().item() if len(x) else 0.0


@contextmanager
def eval_mode(model: nn.Module):
    """Every module in eval mode inside the block, and each module's own ``training`` flag put
    back on exit. Restoring only the top module's flag (``model.train(flag)``) would set the
    whole tree to it: a wrapper made here (new modules are in training mode) would leave the
    user's Dropout live and BatchNorm updating its running statistics."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and parameters frozen (gradients flow to the input only); every module's mode
    and every parameter's requires_grad restored on exit."""
    with eval_mode(model), no_param_grads(model):
        yield model


class ClassScores(nn.Module):
    """A classifier as every attack sees it: float images in, the (N, K) tensor of class scores
    out. Takes the user's output convention (``class_scores``) and casts the images to the
    model's floating dtype (a float64 or float16 model gets its own dtype; the attack keeps
    float32 pixels). Its forward is the model's, so numbers are the model's bit for bit."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dtype = next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_scores(self.model(x if self.dtype in (None, x.dtype) else x.to(self.dtype)))


def classifier(model: nn.Module) -> ClassScores:
    """``model`` wrapped in ``ClassScores`` (once: a wrapped model is returned as it is)."""
    return model if isinstance(model, ClassScores) else ClassScores(model)


def class_scores(outputs) -> torch.Tensor:
    """The (N, K) class scores in a model's outputs: the tensor itself, the first item of a
    tuple or list, a mapping's "logits" entry (Hugging Face outputs), or an object's ``.logits``.
    Anything else is refused in one line."""
    found = outputs
    if isinstance(outputs, Mapping):
        found = outputs.get("logits")
    elif isinstance(outputs, (tuple, list)):
        found = outputs[0] if outputs else None
    elif not isinstance(outputs, torch.Tensor):
        found = getattr(outputs, "logits", None)
    if not isinstance(found, torch.Tensor) or found.ndim != 2 or not found.is_floating_point():
        got = (f"a {found.dtype} tensor of shape {tuple(found.shape)}" if isinstance(found, torch.Tensor)
               else type(outputs).__name__ + (f" with keys {sorted(map(str, outputs))}" if isinstance(outputs, Mapping) else ""))
        raise AttackError("the model must return class scores as a float tensor (N, classes): itself, as the first "
                          f"item of a tuple, a dict's 'logits' or an output's .logits; got {got}")
    return found


def check_labels(scores: torch.Tensor, y: torch.Tensor) -> int:
    """The number of classes K of ``scores`` (N, K); refuses labels outside 0..K-1 in one line."""
    classes = scores.shape[1]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise AttackError(f"labels must be class indices in 0..{classes - 1} (the model has {classes} outputs), "
                          f"got labels in {int(y.min())}..{int(y.max())}")
    return classes


def probe_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """One eval-mode forward of ``x[:1]`` (uint8 or [0, 1]): the model's number of classes,
    with the labels checked against it (``check_labels``)."""
    if not len(x):
        return 0
    xb = x[:1].float().div(255) if x.dtype == torch.uint8 else x[:1].float()
    with eval_mode(model), torch.no_grad():
        return check_labels(classifier(model)(xb.to(model_device(model))), y)


def loss_and_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, logits: bool = False, loss: str = "ce"):
    """Per-sample loss (float32, even under AMP; cross-entropy, or "dlr" of ``losses``) and
    its gradient w.r.t. x_adv.

    x_adv must be a leaf with requires_grad=True; returns (loss (N,), grad like x_adv), and
    the logits (float32, detached) third when ``logits``."""
    with torch.enable_grad():
        out = model(x_adv).float()
        loss = LOSSES[loss](out, y, None)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return (loss.detach(), grad, out.detach()) if logits else (loss.detach(), grad)
