"""Perturbation sizes: parsing ("8/255"), the one display format, and the papers' grids.

eps is always in pixel scale (images in [0, 1]); ``inf`` means the unbounded attack. In L2 it is
the Euclidean distance over all C * H * W pixels, so its radii grow with the image's size."""

from __future__ import annotations

from typing import Any

from robustgan.errors import ConfigError

# paper 000 Sec. 4.2: test-time eps_i and training eps_t grids per dataset
EPS_I_GRIDS = {
    "mnist": [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
    "svhn": [k / 255 for k in range(2, 21, 2)],
    "cifar10": [k / 255 for k in range(2, 21, 2)],
}
EPS_T_GRIDS = {
    "mnist": [0.1, 0.15, 0.2, 0.25, 0.3],
    "svhn": [k / 255 for k in range(2, 11, 2)],
    "cifar10": [k / 255 for k in range(2, 11, 2)],
}
for _small in ("digits", "synthetic"):  # MNIST-like: the MNIST grids
    EPS_I_GRIDS[_small], EPS_T_GRIDS[_small] = EPS_I_GRIDS["mnist"], EPS_T_GRIDS["mnist"]


def parse_number(value: Any) -> float:
    """A float from a number or a fraction string like ``"8/255"``. Raises ValueError (or
    ZeroDivisionError) on anything else."""
    if isinstance(value, bool):
        raise ValueError("boolean is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    raise ValueError(f"{value!r} is not a number")


def format_eps(eps: float) -> str:
    """'8/255' for small multiples of 1/255 (the SVHN / CIFAR-10 grids), else '0.3', 'inf'."""
    k = eps * 255
    if 0 < eps < 0.1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


# L2 grids (no paper of ours has one): around the radii the L2 literature trains and tests at.
# MNIST 2.0 (Tramer & Boneh 2019, "Adversarial training and robustness for multiple
# perturbations"); CIFAR-10 0.5 (RobustBench's L2 leaderboard; MadryLab/robustness's L2 models
# at 0.25, 0.5 and 1.0), SVHN as CIFAR-10 (the same 32x32x3 geometry).
L2_EPS_I_GRIDS = {
    "mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "cifar10": [0.125, 0.25, 0.375, 0.5, 0.75, 1.0],
}
L2_EPS_T_GRIDS = {"mnist": [1.0, 1.5, 2.0, 2.5, 3.0], "cifar10": [0.25, 0.5, 0.75, 1.0]}
for _grids in (L2_EPS_I_GRIDS, L2_EPS_T_GRIDS):
    _grids["svhn"] = _grids["cifar10"]
    _grids["digits"] = _grids["synthetic"] = _grids["mnist"]


def grid_for(dataset: str, kind: str = "eps_i", norm: str = "linf") -> list[float]:
    """The paper's grid of test (``eps_i``) or training (``eps_t``) eps for a dataset (in L2, the
    literature's radii above)."""
    if norm == "l2":
        grids = L2_EPS_I_GRIDS if kind == "eps_i" else L2_EPS_T_GRIDS
    else:
        grids = EPS_I_GRIDS if kind == "eps_i" else EPS_T_GRIDS
    if dataset not in grids:
        raise ConfigError(f"no default {kind} grid for dataset {dataset!r}; give the eps values (--eps)")
    return list(grids[dataset])

