"""Planted gradient masking: wrappers that make a trained model look more robust than it
is, each in a way one or more checks must catch (tests/test_checks.py) or the ensemble's
stages must see through (tests/test_evaluation_engine.py)."""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn as nn

# tests/stress.py --margins sets this to a file: every planted or honest case appends each
# check's distance to its threshold there (``record_margins``)
MARGINS = "ROBUSTGAN_MARGINS"


def margin(result, zero_tol: float = 0.05) -> tuple[float, float | None]:
    """(ratio, p) of a check's result: ratio >= 1 is on the warning side of its effect threshold
    (gap / minimum effect for the paired checks, else the measured value over its bar); p the
    paired checks' p-value (they warn where also p < alpha), None for the others."""
    v = result.values
    if "p_value" in v:
        return v["gap"] / v["min_effect"], v["p_value"]
    ratios = {"gradients": lambda: (v["zero_fraction"] + v["nonfinite_fraction"]) / zero_tol,
              "unbounded": lambda: v["accuracy"] / zero_tol,
              "deterministic": lambda: v["diff"] / 1e-5,
              "logits": lambda: math.inf if v["probabilities"] else 0.0,
              "bound": lambda: max([v["accuracy"], *v["over"].values()]) / v["bound"]}
    return ratios[result.name](), None


def record_margins(case: str, results, trips: set, may_trip: set) -> None:
    """Append (case, check, required / allowed / forbidden, ratio, p, status) per check to the
    file named by $ROBUSTGAN_MARGINS, with the float path this process ran on."""
    path = os.environ.get(MARGINS)
    if not path:
        return
    path_name = os.environ.get("ROBUSTGAN_FLOAT_PATH", "default")
    with open(path, "a") as out:
        for r in results:
            if r.status == "skipped":
                continue
            role = "required" if r.name in trips else "allowed" if r.name in may_trip else "forbidden"
            ratio, p = margin(r)
            out.write(json.dumps({"case": case, "check": r.name, "role": role, "ratio": ratio, "p": p,
                                  "status": r.status, "path": path_name, "threads": torch.get_num_threads()}) + "\n")


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


class RoundInputs(Wrapper):
    """Input quantisation: input gradients are zero almost everywhere."""

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class ScaledLogits(Wrapper):
    """Logits times a constant (a temperature, a missing normalisation): the cross-entropy
    gradient underflows to exactly zero on points whose margin times the scale is large."""

    def __init__(self, model, scale):
        super().__init__(model)
        self.scale = scale

    def forward(self, x):
        return self.model(x) * self.scale


class NoisyInputs(Wrapper):
    """Test-time randomness: Gaussian noise (std 0.1) on the input, drawn from its own generator."""

    def __init__(self, model, seed: int):
        super().__init__(model)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.generator).to(x)
        return self.model((x + 0.1 * noise).clamp(0, 1))


class SaturatedSoftmax(Wrapper):
    """Probabilities of a saturated output instead of logits."""

    def forward(self, x):
        return torch.softmax(self.model(x) * 1000, dim=1)


class _RandomBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, generator):
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.randn(grad.shape, generator=ctx.generator).to(grad), None


class ShatteredGradients(Wrapper):
    """Identity forward, random backward (a non-differentiable preprocessor given a wrong
    gradient, Athalye et al. 2018 Sec. 4.1): gradients are non-zero and meaningless, drawn
    from the wrapper's own generator."""

    def __init__(self, model, seed: int):
        super().__init__(model)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        return self.model(_RandomBackward.apply(x, self.generator))


class NaNGradients(Wrapper):
    """Outputs unchanged, input gradients NaN (d sqrt(u) / du at u = 0, times 0)."""

    def forward(self, x):
        return self.model(x) + 0 * torch.sqrt((x - x.detach()).abs()).sum((1, 2, 3))[:, None]


class ThresholdInputs(Wrapper):
    """A thresholding input layer: every pixel becomes 0 or 1 at 0.5. The input gradient is zero
    everywhere, so no gradient attack moves, while the decision is as attackable as the
    thresholded image: a pixel within eps of 0.5 flips (adversarially trained MNIST models learn
    first layers like this, whose gradients vanish away from the training eps)."""

    def forward(self, x):
        return self.model((x > 0.5).to(x) + 0 * x)


class HalfThresholdInputs(Wrapper):
    """Partial masking: the thresholding layer of ``ThresholdInputs`` on the left half of the
    image only. Input gradients flow through the right half, so gradient attacks make progress
    and stall, while a pixel within eps of 0.5 on the left can still flip the decision: the case
    built to break a rule that gives up on a point because its gradients look healthy or because
    the gradient-free search is slow to start."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return self.model(torch.cat([(x[..., :w] > 0.5).to(x) + 0 * x[..., :w], x[..., w:]], -1))
