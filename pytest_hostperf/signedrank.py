"""Rank statistics for paired data: the Wilcoxon signed-rank test and its estimates.

Pure: numpy and scipy.special only. What :mod:`pytest_hostperf.pairing` builds on:

* the Hodges-Lehmann estimate of the centre of a sample (the median of its Walsh
  averages ``(x_i + x_j) / 2, i <= j``) and the distribution-free confidence interval
  of the Wilcoxon signed-rank test (Hollander & Wolfe, Nonparametric Statistical
  Methods, ch. 3): ordered Walsh averages, their ranks taken from the signed-rank
  statistic's null distribution;
* the one-sided signed-rank p-values;
* the Kruskal-Wallis test of whether consecutive batches of a sample share one location.

The null distribution is exact up to :data:`EXACT_MAX_PAIRS` values without ties or
zeros (R's ``wilcox.test`` stops at 50), a normal approximation with continuity and tie
correction beyond or with ties. All Walsh averages are formed for up to
:data:`WALSH_MAX_PAIRS` values; beyond, the needed order statistics are found by
bisection with an O(n log n) count, to a few units in the last place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from pytest_hostperf.stats import Distribution

#: Exact signed-rank distribution up to this many pairs (without ties or zeros): ~30 ms
#: at 400. The normal approximation is conservative in the far tails at small n (at 50
#: pairs and 99.9% it takes the 297th Walsh average where the exact rank is the 305th).
EXACT_MAX_PAIRS = 400
#: All n(n+1)/2 Walsh averages are formed up to this many pairs (~4 MB at 1000).
WALSH_MAX_PAIRS = 1000

def hodges_lehmann(values: Sequence[float] | np.ndarray, walsh_limit: int = WALSH_MAX_PAIRS) -> float:
    """Median of the Walsh averages ``(x_i + x_j) / 2`` over ``i <= j``."""
    x = np.sort(np.asarray(values, dtype=float))
    total = x.size * (x.size + 1) // 2
    ranks = [(total + 1) // 2] if total % 2 else [total // 2, total // 2 + 1]
    return float(np.mean(walsh_order_statistics(x, ranks, walsh_limit)))


def walsh_order_statistics(sorted_values: np.ndarray, ranks: Sequence[int],
                           walsh_limit: int = WALSH_MAX_PAIRS) -> list[float]:
    """The ``ranks``-th smallest (from 1) Walsh averages of ``sorted_values`` (ascending)."""
    x = sorted_values
    total = x.size * (x.size + 1) // 2
    for rank in ranks:
        if not 1 <= rank <= total:
            raise ValueError(f"rank {rank} outside the {total} Walsh averages of {x.size} values")
    if x.size <= walsh_limit:
        rows, cols = np.triu_indices(x.size)
        sums = np.partition(x[rows] + x[cols], [rank - 1 for rank in ranks])
        return [float(sums[rank - 1]) / 2 for rank in ranks]
    return [_select_pair_sum(x, rank) / 2 for rank in ranks]


def _select_pair_sum(x: np.ndarray, rank: int) -> float:
    """The rank-th smallest ``x_i + x_j`` (i <= j) by bisection on the value, O(n log n) a step.

    Ends when the bracket is a few units in the last place wide: the result is the
    k-th sum to that precision (exactly, unless rounding in ``total - x_i`` decides).
    """
    index = np.arange(x.size)

    def count_at_most(total: float) -> int:
        # Row i pairs with columns j >= i whose x_j <= total - x_i (x is sorted).
        ends = np.searchsorted(x, total - x, side="right")
        return int(np.maximum(ends - index, 0).sum())

    low, high = 2 * float(x[0]), 2 * float(x[-1])
    if count_at_most(low) >= rank:
        return low
    # Invariant: count(low) < rank <= count(high).
    while high - low > 4 * float(np.spacing(max(abs(low), abs(high)))):
        middle = low + (high - low) / 2
        if count_at_most(middle) >= rank:
            high = middle
        else:
            low = middle
    return high


def signed_rank_interval(sorted_ratios: np.ndarray, confidence: float) -> tuple[float, float, float, bool]:
    """(low, high, achieved confidence, exact?) of the centre of ``sorted_ratios``.

    The interval runs from the k-th smallest to the k-th largest Walsh average, k the
    largest rank with P(T+ <= k - 1) <= (1 - confidence) / 2 under the null
    distribution of the signed-rank statistic T+. When even k = 1 misses the level
    (too few pairs) the full range is returned with the confidence it does achieve.
    """
    d = sorted_ratios
    n = d.size
    total = n * (n + 1) // 2
    tail = (1 - confidence) / 2
    exact = n <= EXACT_MAX_PAIRS and not _has_ties(d)
    if exact:
        cdf = np.cumsum(signed_rank_null(n))
        # k - 1 = how many values of T+ have a cumulative probability within the tail
        # (a relative 1e-9 of slack so that a level equal to a cdf value counts as reached).
        k = int(np.searchsorted(cdf, tail * (1 + 1e-9), side="right"))
        achieved = 1 - 2 * float(cdf[max(k, 1) - 1])
    else:
        mean, sd = total / 2, math.sqrt(_signed_rank_variance(n, _tie_sizes(d)))
        k = math.floor(mean + 0.5 - Distribution().ppf(1 - tail) * sd)
        achieved = 1 - 2 * Distribution().cdf((max(k, 1) - 0.5 - mean) / sd)
    low, high = walsh_order_statistics(d, [max(k, 1), total + 1 - max(k, 1)])
    return low, high, achieved, exact


def signed_rank_pvalues(ratios: np.ndarray) -> tuple[float, float]:
    """One-sided p-values (centre > 0, centre < 0) of the Wilcoxon signed-rank test at 0.

    Zero ratios (identical timings) are dropped, as Wilcoxon did and R and scipy do by
    default. Exact without ties up to :data:`EXACT_MAX_PAIRS`, else the normal
    approximation with tie and continuity correction. No non-zero ratio: (1, 1).
    """
    d = np.asarray(ratios, dtype=float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0, 1.0
    magnitudes = np.abs(d)
    ranks = _average_ranks(magnitudes)
    t_plus = float(ranks[d > 0].sum())
    if n <= EXACT_MAX_PAIRS and not _has_ties(magnitudes):
        null = signed_rank_null(n)
        at = round(t_plus)
        return float(null[at:].sum()), float(null[: at + 1].sum())
    mean = n * (n + 1) / 4
    sd = math.sqrt(_signed_rank_variance(n, _tie_sizes(np.sort(magnitudes))))
    if sd == 0:
        return 1.0, 1.0
    return Distribution().cdf(-(t_plus - mean - 0.5) / sd), Distribution().cdf((t_plus - mean + 0.5) / sd)


@functools.lru_cache(maxsize=16)
def signed_rank_null(n: int) -> np.ndarray:
    """P(T+ = t) for t = 0 .. n(n+1)/2 when each rank's sign is a fair coin (read-only).

    ~1 ms at 120, ~30 ms at 400; kept for the few pair counts a session uses.
    """
    probabilities = np.zeros(n * (n + 1) // 2 + 1)
    probabilities[0] = 1.0
    top = 0
    for rank in range(1, n + 1):
        # With this rank positive T+ grows by the rank, negative it stays: shift and add.
        probabilities[rank: top + rank + 1] += probabilities[: top + 1].copy()
        top += rank
        probabilities[: top + 1] *= 0.5
    probabilities.setflags(write=False)  # shared by the cache
    return probabilities


def kruskal_wallis(batches: Sequence[np.ndarray]) -> float:
    """p-value of the Kruskal-Wallis test that the batches come from one distribution.

    Ranks over all values (ties averaged), H = 12 / (N(N+1)) * sum n_j (mean rank_j -
    (N+1)/2)^2 divided by the tie correction, chi-square with (batches - 1) degrees of
    freedom. All values equal: 1.
    """
    from scipy import special

    values = np.concatenate(batches)
    total = values.size
    ranks = _average_ranks(values)
    tie_sizes = _tie_sizes(np.sort(values)).astype(float)
    correction = 1 - float(np.sum(tie_sizes ** 3 - tie_sizes)) / (total ** 3 - total)
    if len(batches) < 2 or correction <= 0:
        return 1.0
    h, start = 0.0, 0
    for batch in batches:
        mean_rank = float(ranks[start: start + batch.size].mean())
        h += batch.size * (mean_rank - (total + 1) / 2) ** 2
        start += batch.size
    h *= 12 / (total * (total + 1)) / correction
    return float(special.chdtrc(len(batches) - 1, h))


def _has_ties(sorted_values: np.ndarray) -> bool:
    return bool(np.any(np.diff(sorted_values) == 0))


def _tie_sizes(sorted_values: np.ndarray) -> np.ndarray:
    """Sizes of the groups of equal values (1 for a value without ties)."""
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_values) != 0])
    return np.diff(np.r_[starts, sorted_values.size])


def _signed_rank_variance(n: int, tie_sizes: np.ndarray) -> float:
    """Variance of T+ under the null, less the share tied ranks remove (sum (t^3 - t) / 48)."""
    t = tie_sizes.astype(float)
    return n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(t ** 3 - t)) / 48


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    sizes = _tie_sizes(sorted_values)
    ends = np.cumsum(sizes)
    group_ranks = ends - (sizes - 1) / 2
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(group_ranks, sizes)
    return ranks
