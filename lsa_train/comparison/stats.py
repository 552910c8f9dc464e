"""Paired statistics of per-pair differences: mean, sample std, t interval, paired t-test, exact sign-flip
test, and the Holm adjustment across a family of tests.

Every function takes the per-pair differences ``treatment - baseline`` in whatever unit the caller uses
(:mod:`lsa_train.comparison` passes percentage points) and returns statistics in that unit; p-values are
two-sided probabilities in ``[0, 1]``. ``nan`` marks a statistic that is undefined (fewer than two pairs, or
for the t-test a zero spread). The t distribution comes from scipy, which scikit-learn (a dependency) installs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Largest number of pairs for which the sign-flip test enumerates all 2^n sign assignments (16.8 M).
MAX_EXACT_SIGN_FLIP = 24


@dataclass(frozen=True)
class PairedStats:
    """Statistics of the per-pair differences of one comparison (same unit as the differences).

    Attributes:
        n: Number of pairs.
        deltas: The per-pair differences, in the order given.
        mean: Their mean.
        std: Their sample standard deviation (``ddof=1``); ``nan`` for one pair.
        ci_low: Lower end of the two-sided t interval of the mean (``level``, default 95 %).
        ci_high: Upper end of that interval.
        t: The paired t statistic ``mean / (std / sqrt(n))``; ``nan`` when undefined.
        p_t: Two-sided p-value of the paired t-test (``n - 1`` degrees of freedom).
        p_sign_flip: Exact two-sided sign-flip (permutation) p-value; at least ``2 / 2**n`` unless every
            difference is 0 (then 1).
    """

    n: int
    deltas: tuple[float, ...]
    mean: float
    std: float
    ci_low: float
    ci_high: float
    t: float
    p_t: float
    p_sign_flip: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; ``nan`` for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_test(deltas: Sequence[float]) -> tuple[float, float]:
    """``(t, p)`` of the two-sided one-sample t-test of ``mean(deltas) = 0`` (the paired t-test of the pairs).

    Undefined (``nan``, ``nan``) for fewer than two pairs or when every difference is the same.
    """
    from scipy import stats

    n = len(deltas)
    mean, std = mean_std(deltas)
    if n < 2 or not std > 0:
        return math.nan, math.nan
    t = mean / (std / math.sqrt(n))
    return t, float(min(1.0, 2.0 * stats.t.sf(abs(t), n - 1)))


def t_interval(deltas: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` t interval of the mean: ``mean -+ t_{(1+level)/2, n-1} * std / sqrt(n)``.

    ``(nan, nan)`` for fewer than two pairs; a zero spread gives ``(mean, mean)``.
    """
    from scipy import stats

    n = len(deltas)
    mean, std = mean_std(deltas)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def sign_flip_p(deltas: Sequence[float], max_exact: int = MAX_EXACT_SIGN_FLIP) -> float:
    """Exact two-sided sign-flip p-value of ``mean(deltas) = 0``.

    Under the null hypothesis each difference is as likely to be ``+d`` as ``-d``; the p-value is the share of
    the ``2**n`` sign assignments whose ``|sum|`` is at least the observed ``|sum|`` (the observed one and its
    mirror image always count, so it is never below ``2 / 2**n``: 0.0625 for 5 pairs). Exact up to
    ``max_exact`` pairs; ``nan`` beyond (and for no pairs).
    """
    n = len(deltas)
    if n == 0 or n > max_exact:
        return math.nan
    values = np.asarray(deltas, dtype=np.float64)
    observed = abs(float(values.sum()))
    tolerance = 1e-9 * max(1.0, float(np.abs(values).sum()))
    total = 1 << n
    chunk = 1 << min(n, 16)
    bits = np.arange(n, dtype=np.int64)
    count = 0
    for start in range(0, total, chunk):
        codes = np.arange(start, min(start + chunk, total), dtype=np.int64)
        signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)  # bit set -> -1
        sums = np.abs(signs @ values)
        count += int(np.count_nonzero(sums >= observed - tolerance))
    return count / total


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The family is the finite p-values (``nan`` entries stay ``nan`` and do not count): sorted ascending,
    the i-th smallest (0-based) is multiplied by ``m - i``, a running maximum keeps the order, and values are
    capped at 1. A hypothesis is rejected at level alpha exactly when its adjusted p is below alpha.
    """
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(finite)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def paired_stats(deltas: Sequence[float], level: float = 0.95) -> PairedStats:
    """All statistics of :class:`PairedStats` for the per-pair differences ``deltas``."""
    values = tuple(float(d) for d in deltas)
    mean, std = mean_std(values)
    low, high = t_interval(values, level)
    t, p_t = t_test(values)
    return PairedStats(n=len(values), deltas=values, mean=mean, std=std, ci_low=low, ci_high=high, t=t, p_t=p_t,
                       p_sign_flip=sign_flip_p(values))
