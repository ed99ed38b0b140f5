"""Paired comparison of two attacks on the same test points (the masking checks' rule).

Each attack gives a per-point outcome (still correct or fooled). Points both attacks fool,
or neither, say nothing about which attack is stronger; only the discordant points do:
``only_alt`` points only the alternative attack fooled, ``only_ref`` only the reference.
If the two attacks were equally strong, each discordant point would fall either way with
probability 1/2, so ``only_alt`` ~ Binomial(only_alt + only_ref, 1/2) (McNemar's exact,
one-sided sign test). A check warns when

    p = P(X >= only_alt) < alpha    and    gap = (only_alt - only_ref) / n >= min_effect,

that is, when the alternative's extra successes are more than chance explains *and* large
enough to matter. Under equal strength the first condition alone holds with probability at
most alpha, whatever n; the minimum effect only lowers that rate. docs/evaluation.md has the
per-check minimum effects and where they come from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ALPHA = 0.01  # one-sided level of each paired check: its false-alarm rate is at most 1%


@dataclass
class Paired:
    n: int
    ref: float  # accuracy under the reference attack
    alt: float  # accuracy under the alternative attack
    only_alt: int  # points fooled by the alternative only
    only_ref: int  # points fooled by the reference only
    p_value: float  # one-sided exact sign test: the alternative is no stronger

    @property
    def gap(self) -> float:
        """How many accuracy points (as a fraction) the alternative is stronger by."""
        return self.ref - self.alt

    def excess(self, min_effect: float, alpha: float = ALPHA) -> bool:
        """The alternative is stronger by more than noise explains and by at least ``min_effect``."""
        return self.p_value < alpha and self.gap >= min_effect - 1e-12

    def as_dict(self) -> dict:
        return asdict(self) | {"gap": self.gap}

    def describe(self) -> str:
        return f"{self.only_alt} vs {self.only_ref} discordant of {self.n}, p = {self.p_value:.2g}"


def sign_test(only_alt: int, only_ref: int) -> float:
    """P(X >= only_alt) for X ~ Binomial(only_alt + only_ref, 1/2); 1 without discordant pairs.
    Summed in exact integers (SciPy's binom would cost every CLI start its import)."""
    discordant = only_alt + only_ref
    tail = sum(math.comb(discordant, k) for k in range(max(only_alt, 0), discordant + 1))
    return tail / 2 ** discordant  # int / int: correctly rounded, however large


def paired(ref_correct: torch.Tensor, alt_correct: torch.Tensor) -> Paired:
    """Compare two per-point outcomes (bool (n,), True = still correct) on the same points."""
    ref_correct, alt_correct = ref_correct.bool().cpu(), alt_correct.bool().cpu()
    if ref_correct.shape != alt_correct.shape:
        raise ValueError(f"paired outcomes need the same points, got {tuple(ref_correct.shape)} "
                         f"and {tuple(alt_correct.shape)}")
    n = len(ref_correct)
    only_alt = int((ref_correct & ~alt_correct).sum())
    only_ref = int((~ref_correct & alt_correct).sum())
    ref, alt = (ref_correct.float().mean().item(), alt_correct.float().mean().item()) if n else (0.0, 0.0)
    return Paired(n, ref, alt, only_alt, only_ref, sign_test(only_alt, only_ref))
