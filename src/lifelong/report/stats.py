"""Mean and 95% confidence half-width of a handful of runs (seeds, task orders), without scipy.

The half-width is ``t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation
(``n - 1`` in the denominator) and ``t`` the Student t quantile: exact (to 6 decimals) from a table
for 1..30 degrees of freedom, and from the Cornish-Fisher expansion beyond (error below 1e-7).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: t(0.975, df) for df = 1..30, to 6 decimals.
T_975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)
#: The standard normal 0.975 quantile, the limit of t(0.975, df) as df grows.
Z_975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t distribution with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom df={df} must be at least 1")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975  # Cornish-Fisher expansion of the t quantile around the normal one
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values and the half-width of its 95% confidence interval (None when n < 2)."""

    mean: float | None
    half_width: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "ci95": self.half_width, "n": self.n}


def summarize(values: Iterable[float | None]) -> Summary:
    """Mean ± 95% CI half-width of the values that are not None or NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    if n == 0:
        return Summary(None, None, 0)
    mean = math.fsum(kept) / n
    if n == 1:
        return Summary(mean, None, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1))
    return Summary(mean, t_quantile_975(n - 1) * sd / math.sqrt(n), n)
