"""Perturbation sizes: parsing ("8/255"), the one display format, and the papers' grids.

eps is always in pixel scale (images in [0, 1]); ``inf`` means the unbounded attack."""

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


def grid_for(dataset: str, kind: str = "eps_i") -> list[float]:
    """The paper's grid of test (``eps_i``) or training (``eps_t``) eps for a dataset."""
    grids = EPS_I_GRIDS if kind == "eps_i" else EPS_T_GRIDS
    if dataset not in grids:
        raise ConfigError(f"no default {kind} grid for dataset {dataset!r}; give the eps values (--eps)")
    return list(grids[dataset])

