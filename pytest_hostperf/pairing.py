"""Paired comparisons: two sides measured in alternating pairs, judged from the pairs.

Pure: numpy and scipy.special only, no pytest. Used for ``--hostperf-against=REV``
(working tree vs a git revision) and for the ratio of an environment to native.

**Why pairs.** On a shared machine the speed of the CPU moves in phases (benchmarks/
machine_noise.py: slow phases of 1-2 ms typically, up to 0.35 s measured and ~2 s seen;
stored sessions of one test differ by 15-28%). A comparison of two sides measured at
different moments mostly measures the moments. Here each *pair* is one short round of
each side, back to back, in random order; a phase longer than a pair slows both halves
alike and cancels in the pair's ratio, a shorter one lands at random on either side and
only adds noise. The sample is the per-pair log ratio ``d = ln(candidate / reference)``.

**The estimate.** The Hodges-Lehmann estimate of the centre of ``d`` (the median of its
Walsh averages ``(d_i + d_j) / 2, i <= j``) with the distribution-free confidence
interval of the Wilcoxon signed-rank test (Hollander & Wolfe, Nonparametric Statistical
Methods, ch. 3): ordered Walsh averages, their ranks taken from the signed-rank
statistic's null distribution. It needs only that ``d`` is symmetric about its centre,
which random order within each pair provides under "no difference", and it keeps its
level under the heavy tails of timing data. The null distribution is exact up to
:data:`EXACT_MAX_PAIRS` pairs without ties or zeros (R's ``wilcox.test`` stops at 50),
a normal approximation with continuity and tie correction beyond or with ties. All Walsh averages are
formed for up to :data:`WALSH_MAX_PAIRS` pairs; beyond, the needed order statistics are
found by bisection with an O(n log n) count, to a few units in the last place.

Ratios are ``candidate / reference``: 1.10 means the candidate is 10% slower.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

#: Which side a round belongs to: the reference (REV, native) or the candidate
#: (the working tree, the environment).
Side = Literal["reference", "candidate"]
#: The verdict names this module gives (the values of ``verdict.Verdict`` it can return).
PairedVerdict = Literal["pass", "regression", "improvement", "inconclusive", "unstable"]

#: One round of each side lasts about this long. A pair (two rounds and the switch
#: between them, ~10 ms) must fit inside the machine's longer phases (tens of ms to
#: ~2 s) so that they hit both halves; a round must outlast the short slow phases
#: (1-2 ms) so that each half averages several of them instead of being one of them.
#: benchmarks/paired_prototype.py measures the choice (rounds of 1 to 50 ms).
DEFAULT_ROUND_SECONDS = 0.005
#: Pairs per comparison: at this machine's per-pair spread of 5 ms rounds (~2-4%, see
#: benchmarks/results/paired-prototype.log) 120 pairs prove a change of twice a 2%
#: tolerance at a family-wise 99.9%; :func:`pairs_needed` gives it for other noise.
DEFAULT_PAIRS = 120
#: Exact signed-rank distribution up to this many pairs (without ties or zeros): ~30 ms
#: at 400. The normal approximation is conservative in the far tails at small n (at 50
#: pairs and 99.9% it takes the 297th Walsh average where the exact rank is the 305th).
EXACT_MAX_PAIRS = 400
#: All n(n+1)/2 Walsh averages are formed up to this many pairs (~4 MB at 1000).
WALSH_MAX_PAIRS = 1000

#: IQR of a standard normal: turns an IQR into a robust standard deviation.
_NORMAL_IQR = 1.3489795003921634


class PairSchedule:
    """The order of the two sides in each of ``pairs`` pairs, reproducible from ``seed``.

    Balanced: the candidate goes first in exactly half of the pairs (one more when odd),
    in shuffled positions, so a cost of going first or second (a cold cache after the
    switch) falls on both sides equally instead of biasing the ratio. The measuring loop
    only asks for the next pair::

        for first, second in PairSchedule(120, seed):
            ...
    """

    def __init__(self, pairs: int, seed: int | str) -> None:
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
            raise ValueError(f"a pair schedule needs a positive number of pairs, got {pairs!r}")
        candidate_first = [index < (pairs + 1) // 2 for index in range(pairs)]
        random.Random(seed).shuffle(candidate_first)
        self.candidate_first: tuple[bool, ...] = tuple(candidate_first)

    def __len__(self) -> int:
        return len(self.candidate_first)

    def __iter__(self) -> Iterator[tuple[Side, Side]]:
        for candidate_first in self.candidate_first:
            yield ("candidate", "reference") if candidate_first else ("reference", "candidate")

    def order(self, pair: int) -> tuple[Side, Side]:
        """Which side runs first and second in pair number ``pair`` (from 0)."""
        return ("candidate", "reference") if self.candidate_first[pair] else ("reference", "candidate")


@dataclasses.dataclass(frozen=True)
class PairedEstimate:
    """The ratio ``candidate / reference`` from per-pair log ratios, with its interval.

    ``ci_low``/``ci_high`` bound the ratio at (at least) ``confidence``, two-sided; when
    there are too few pairs to reach it they are 0 and infinity (proving nothing) and
    ``achieved_confidence`` says what the pairs could give. ``p_slower`` is the
    one-sided p-value of "the candidate is not slower" (ratio <= 1), ``p_faster`` of
    "not faster". ``spread`` is the robust standard deviation (IQR / 1.349) of the log
    ratios: how much single pairs disagree.
    """

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    achieved_confidence: float
    p_slower: float
    p_faster: float
    pairs: int
    spread: float
    method: str

    @property
    def reached_confidence(self) -> bool:
        return _reaches(self.achieved_confidence, self.confidence)

    @property
    def log_half_width(self) -> float:
        """The larger distance from the estimate to an end of the interval, log scale."""
        if not self.reached_confidence or self.ci_low <= 0:
            return math.inf
        return max(math.log(self.ci_high / self.ratio), math.log(self.ratio / self.ci_low))


@dataclasses.dataclass(frozen=True)
class PairedJudgement:
    """A verdict (a ``verdict.Verdict`` value) with its one-line reason."""

    verdict: PairedVerdict
    reason: str
    estimate: PairedEstimate


def log_ratios(reference: Sequence[float], candidate: Sequence[float]) -> np.ndarray:
    """``ln(candidate_i / reference_i)`` per pair, refusing what no timing can be."""
    ref = np.asarray(reference, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if ref.ndim != 1 or cand.ndim != 1 or ref.size != cand.size:
        raise ValueError(f"paired timings need two flat sequences of equal length, got {ref.shape} "
                         f"reference and {cand.shape} candidate timings")
    if ref.size == 0:
        raise ValueError("no pairs: a paired comparison needs at least one timing of each side")
    for name, side in (("reference", ref), ("candidate", cand)):
        bad = np.flatnonzero(~np.isfinite(side) | (side <= 0))
        if bad.size:
            raise ValueError(f"{name} timing of pair {int(bad[0])} is {side[bad[0]]!r}: timings must be "
                             f"positive finite seconds ({bad.size} bad of {side.size})")
    ratios: np.ndarray = np.log(cand) - np.log(ref)
    return ratios


def estimate(reference: Sequence[float], candidate: Sequence[float], confidence: float) -> PairedEstimate:
    """Ratio ``candidate / reference`` of paired timings (seconds per call, pair by pair)."""
    return estimate_log_ratios(log_ratios(reference, candidate), confidence)


def estimate_log_ratios(ratios: Sequence[float] | np.ndarray, confidence: float) -> PairedEstimate:
    """Hodges-Lehmann ratio, signed-rank interval and p-values from per-pair log ratios."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (two-sided, e.g. 0.99), got {confidence!r}")
    d = np.asarray(ratios, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("log ratios must be a non-empty flat sequence of finite numbers")
    d = np.sort(d)
    centre = hodges_lehmann(d)
    low, high, achieved, exact = signed_rank_interval(d, confidence)
    p_slower, p_faster = signed_rank_pvalues(d)
    q1, q3 = np.percentile(d, [25, 75])
    method = (f"Hodges-Lehmann, {'exact' if exact else 'normal-approximation'} Wilcoxon signed-rank "
              f"interval over {d.size} pairs")
    reached = _reaches(achieved, confidence)
    return PairedEstimate(
        ratio=math.exp(centre),
        ci_low=math.exp(low) if reached else 0.0,
        ci_high=math.exp(high) if reached else math.inf,
        confidence=confidence, achieved_confidence=achieved,
        p_slower=p_slower, p_faster=p_faster, pairs=int(d.size),
        spread=float(q3 - q1) / _NORMAL_IQR, method=method)


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
        k = math.floor(mean + 0.5 - _normal_ppf(1 - tail) * sd)
        achieved = 1 - 2 * _normal_cdf((max(k, 1) - 0.5 - mean) / sd)
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
    return _normal_cdf(-(t_plus - mean - 0.5) / sd), _normal_cdf((t_plus - mean + 0.5) / sd)


def signed_rank_null(n: int) -> np.ndarray:
    """P(T+ = t) for t = 0 .. n(n+1)/2 when each rank's sign is a fair coin (~1 ms at 120)."""
    probabilities = np.zeros(n * (n + 1) // 2 + 1)
    probabilities[0] = 1.0
    top = 0
    for rank in range(1, n + 1):
        # With this rank positive T+ grows by the rank, negative it stays: shift and add.
        probabilities[rank: top + rank + 1] += probabilities[: top + 1].copy()
        top += rank
        probabilities[: top + 1] *= 0.5
    return probabilities


def pairs_needed(spread: float, tolerance: float, confidence: float) -> int:
    """Pairs whose interval would be narrow enough to prove a change of twice ``tolerance``.

    From the large-sample half-width of the Hodges-Lehmann interval for normal log
    ratios, z * spread * sqrt(pi / 3n), set equal to the step from 1 + tolerance to
    1 + 2 * tolerance; never fewer than the confidence itself needs (2^-n per tail).
    """
    if spread < 0 or not math.isfinite(spread) or tolerance <= 0 or not 0 < confidence < 1:
        raise ValueError(f"need spread >= 0, tolerance > 0 and 0 < confidence < 1, got {spread!r}, "
                         f"{tolerance!r}, {confidence!r}")
    least = math.ceil(math.log2(2 / (1 - confidence)))
    step = _provable_step(tolerance)
    z = _normal_ppf(0.5 + confidence / 2)
    return max(least, math.ceil(math.pi / 3 * (z * spread / step) ** 2))


def judge(estimate: PairedEstimate, tolerance: float, against: str = "reference") -> PairedJudgement:
    """The verdict of one paired comparison, in the order of the rules of ``verdict``.

    ``regression``/``improvement`` when the whole interval lies beyond the tolerance;
    ``inconclusive`` when there were too few pairs to reach the confidence at all;
    ``unstable`` when the interval is so wide that it could not have proven even a
    change of twice the tolerance (the pairs disagree too much: a steadier benchmark or
    more pairs would); ``inconclusive`` when the estimate is beyond the tolerance but
    not proven; ``pass`` otherwise. ``against`` names the reference in the reason
    ("abc1234", "native").
    """
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive (0.05 = 5%), got {tolerance!r}")
    e = estimate
    slower = e.ratio >= 1
    interval = (f"{e.ratio:.3f}x {against} (CI {e.ci_low:.3f}-{e.ci_high:.3f} at {e.confidence:.2%}, "
                f"p={e.p_slower if slower else e.p_faster:.2g}, {e.pairs} pairs)")
    if e.ci_low > 1 + tolerance:
        return PairedJudgement("regression", f"regression: {interval}, tolerance {tolerance:.0%}", e)
    if e.ci_high < 1 / (1 + tolerance):
        return PairedJudgement("improvement", f"improvement: {interval}, tolerance {tolerance:.0%}", e)
    if not e.reached_confidence:
        least = math.ceil(math.log2(2 / (1 - e.confidence)))
        return PairedJudgement("inconclusive", (
            f"too few pairs: {e.pairs} pairs reach at most {e.achieved_confidence:.1%} confidence, "
            f"{e.confidence:.2%} needs at least {least}; measured {e.ratio:.3f}x {against}"), e)
    if e.log_half_width > _provable_step(tolerance):
        need = pairs_needed(e.spread, tolerance, e.confidence)
        return PairedJudgement("unstable", (
            f"pairs disagree: single pairs vary by {e.spread:.1%} (robust SD of log ratios), so the interval "
            f"{e.ci_low:.3f}-{e.ci_high:.3f} around {e.ratio:.3f}x {against} could not prove even a "
            f"{2 * tolerance:.0%} change; ~{need} pairs or a steadier benchmark would"), e)
    if e.ratio > 1 + tolerance or e.ratio < 1 / (1 + tolerance):
        return PairedJudgement("inconclusive", f"possible change beyond the {tolerance:.0%} tolerance, "
                                               f"not proven: {interval}", e)
    return PairedJudgement("pass", interval, e)


def _reaches(achieved: float, confidence: float) -> bool:
    return achieved >= confidence - 1e-9  # an exact level equal to the request, up to rounding


def _provable_step(tolerance: float) -> float:
    """Log distance from 1 + tolerance to 1 + 2 * tolerance: the half-width a gate can use."""
    return math.log1p(2 * tolerance) - math.log1p(tolerance)


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


def _normal_cdf(x: float) -> float:
    from scipy import special  # ~0.25 s; loaded on first use, as stats.py does

    return float(special.ndtr(x))


def _normal_ppf(q: float) -> float:
    from scipy import special

    return float(special.ndtri(q))
