"""Statistics over seeds: mean and spread that say how many runs they rest on, and paired differences.

A spread needs at least two runs: with one, the standard deviation is NaN (shown empty), never
0. Two configurations run with the same seeds are compared pairwise, seed by seed: the mean
difference, its 95% confidence interval from Student's t with n - 1 degrees of freedom, and the
two-sided p-value of the paired t-test. Pairing removes what the seeds share (the same view
draws, batch order and initialization where the configurations allow it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN when fewer than two values) and the count; Nones skipped."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def t_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of ``values`` (NaN, NaN with fewer than two)."""
    v = np.array(list(values), dtype=np.float64)
    if len(v) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the seeds both have: mean, 95% CI (NaN with fewer than two pairs), paired-t p-value."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> PairedDifference:
    """Compare two configurations run with the same seeds (``seed -> value``); unshared seeds are ignored."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    n = len(d)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return PairedDifference(n, mean, mean, mean, p)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedDifference(n, mean, mean - half, mean + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values over one family of comparisons, in the input order.

    Step-down: the i-th smallest of ``m`` p-values is multiplied by ``m - i`` (i from 0), the
    running maximum keeps the adjusted values monotone, and each is capped at 1. Rejecting where
    the adjusted value is below alpha controls the family-wise error at alpha. NaN (no test) stays
    NaN and does not count in ``m``.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
