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

**The estimate.** The Hodges-Lehmann estimate of the centre of ``d`` with the
distribution-free interval of the Wilcoxon signed-rank test
(:mod:`pytest_hostperf.signedrank`). It needs only that ``d`` is symmetric about its
centre, which random order within each pair provides under "no difference", and it
keeps its level under the heavy tails of timing data.

**The drift guard.** That interval assumes the pairs are alike from first to last. On
this machine they sometimes are not: for a few hundred milliseconds one of two
processes runs 10-50% slower than the other, then not (benchmarks/results/
paired-prototype.log, run 4: the quarters of one A/A comparison read +16%, +14%, +6%,
+2%). Pairs cannot cancel that, and the signed-rank interval, built as if the episode
were noise spread over the whole comparison, came out narrow around a biased centre:
2-4 false verdicts in 60 A/A comparisons at a 5% tolerance. So the pairs, in the order
measured, are cut into :data:`DRIFT_BATCHES` consecutive batches; when a Kruskal-Wallis
test says the batches differ (p < :data:`DRIFT_ALPHA`), the interval is widened to a
batch-means interval (Student's t over the batches' Hodges-Lehmann estimates), which
counts each batch as one observation of a ratio that moves. On the same data: 0 false
verdicts, at the cost of a 10% slowdown read ``unstable`` instead of ``regression`` in
about a fifth of comparisons (measured: 43 -> 32 of 60). A moving-block bootstrap with
blocks of 10 pairs was no wider than the signed-rank interval (median 1.05x): the
episodes are longer than such blocks.

Ratios are ``candidate / reference``: 1.10 means the candidate is 10% slower.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from pytest_hostperf.signedrank import hodges_lehmann, kruskal_wallis, signed_rank_interval, signed_rank_pvalues
from pytest_hostperf.stats import Distribution

#: Which side a round belongs to: the reference (REV, native) or the candidate
#: (the working tree, the environment).
Side = Literal["reference", "candidate"]
#: The verdict names this module gives (the values of ``verdict.Verdict`` it can return).
PairedVerdict = Literal["pass", "regression", "improvement", "inconclusive", "unstable"]

#: One round of each side lasts about this long. A pair (two rounds and the switch
#: between them) must fit inside the machine's longer phases (tens of ms to ~2 s) so
#: that they hit both halves alike; and under CPU contention a round should be shorter
#: than the scheduler's time slice (a few ms with several runnable tasks per CPU), or
#: nearly every round is cut by other tasks' slices. Measured at a fixed budget of 0.6 s
#: per side under load 7-10 on 2 CPUs (paired-prototype.log, sweep): wall-clock A/A
#: interval widths of 6, 11, 36, 72 and 99% for rounds of 1, 2, 5, 20 and 50 ms; at 1 ms
#: the A/A intervals missed 1.0 in 5 of 15 comparisons (what the drift guard is for).
DEFAULT_ROUND_SECONDS = 0.002
#: Pairs per comparison: 0.6 s of each side at 2 ms rounds. At the per-pair spread of
#: this machine under load (8-18% CPU time, 14-35% wall clock, paired-prototype.log)
#: this proves a 10% slowdown at a 5% tolerance; :func:`pairs_needed` gives the number
#: for other noise and tolerances.
DEFAULT_PAIRS = 300
#: The drift guard: consecutive batches of the pairs, compared by Kruskal-Wallis at this level.
DRIFT_BATCHES = 8
DRIFT_ALPHA = 0.01
#: ... and only with at least this many pairs per batch.
DRIFT_MIN_BATCH = 5
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
    ``achieved_confidence`` says what the pairs could give; when the drift guard found the
    ratio moving during the measurement it is the wider batch-means interval
    (``widened``, with each batch's ratio in ``batch_ratios``). ``p_slower`` is the
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
    drift_p: float | None = None  # the drift guard's Kruskal-Wallis p (None: too few pairs to ask)
    batch_ratios: tuple[float, ...] = ()  # each batch's ratio, when the guard widened the interval

    @property
    def widened(self) -> bool:
        """Whether the drift guard widened the interval (the ratio moved during the measurement)."""
        return bool(self.batch_ratios)

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
    """Ratio ``candidate / reference`` of paired timings (seconds per call), in the order measured."""
    return estimate_log_ratios(log_ratios(reference, candidate), confidence)


def estimate_log_ratios(ratios: Sequence[float] | np.ndarray, confidence: float) -> PairedEstimate:
    """Hodges-Lehmann ratio, its interval and p-values from per-pair log ratios.

    ``ratios`` must be in the order measured: the drift guard compares consecutive batches.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (two-sided, e.g. 0.99), got {confidence!r}")
    in_order = np.asarray(ratios, dtype=float)
    if in_order.ndim != 1 or in_order.size == 0 or not np.all(np.isfinite(in_order)):
        raise ValueError("log ratios must be a non-empty flat sequence of finite numbers")
    d = np.sort(in_order)
    centre = hodges_lehmann(d)
    low, high, achieved, exact = signed_rank_interval(d, confidence)
    method = (f"Hodges-Lehmann, {'exact' if exact else 'normal-approximation'} Wilcoxon signed-rank "
              f"interval over {d.size} pairs")
    drift = _drift(in_order, centre, confidence)
    if drift is not None and drift.half_width > 0:
        low, high = min(low, centre - drift.half_width), max(high, centre + drift.half_width)
        method += (f", widened to {DRIFT_BATCHES} batches' spread (the ratio moved during the "
                   f"measurement, Kruskal-Wallis p={drift.p_value:.2g})")
    p_slower, p_faster = signed_rank_pvalues(d)
    q1, q3 = np.percentile(d, [25, 75])
    reached = _reaches(achieved, confidence)
    return PairedEstimate(
        ratio=math.exp(centre),
        ci_low=math.exp(low) if reached else 0.0,
        ci_high=math.exp(high) if reached else math.inf,
        confidence=confidence, achieved_confidence=achieved,
        p_slower=p_slower, p_faster=p_faster, pairs=int(d.size),
        spread=float(q3 - q1) / _NORMAL_IQR, method=method,
        drift_p=drift.p_value if drift is not None else None,
        batch_ratios=tuple(math.exp(v) for v in drift.centres) if drift is not None and drift.half_width > 0 else ())


@dataclasses.dataclass(frozen=True)
class _Drift:
    p_value: float
    centres: tuple[float, ...]  # each batch's Hodges-Lehmann log ratio
    half_width: float           # of the batch-means interval; 0 when the batches agree


def _drift(in_order: np.ndarray, centre: float, confidence: float) -> _Drift | None:
    """Kruskal-Wallis over consecutive batches; the batch-means half-width if they differ."""
    if in_order.size < DRIFT_BATCHES * DRIFT_MIN_BATCH:
        return None
    batches = np.array_split(in_order, DRIFT_BATCHES)
    p_value = kruskal_wallis(batches)
    if p_value >= DRIFT_ALPHA:
        return _Drift(p_value, (), 0.0)
    centres = tuple(hodges_lehmann(batch) for batch in batches)
    spread = float(np.std(centres, ddof=1))
    half_width = Distribution(df=DRIFT_BATCHES - 1).ppf(0.5 + confidence / 2) * spread / math.sqrt(DRIFT_BATCHES)
    return _Drift(p_value, centres, half_width)


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
    z = Distribution().ppf(0.5 + confidence / 2)
    return max(least, math.ceil(math.pi / 3 * (z * spread / step) ** 2))


def judge(estimate: PairedEstimate, tolerance: float, against: str = "reference") -> PairedJudgement:
    """The verdict of one paired comparison, in the order of the rules of ``verdict``.

    ``regression``/``improvement`` when the whole interval lies beyond the tolerance;
    ``inconclusive`` when there were too few pairs to reach the confidence at all;
    ``unstable`` when the interval is so wide that it could not have proven even a
    change of twice the tolerance: the pairs disagree too much (a steadier benchmark or
    more pairs would), or the ratio moved during the measurement (the drift guard
    widened the interval); ``inconclusive`` when the estimate is beyond the tolerance but
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
    if e.log_half_width > _provable_step(tolerance) and e.widened:
        return PairedJudgement("unstable", (
            f"the ratio moved during the measurement: consecutive batches of pairs read "
            f"{min(e.batch_ratios):.3f}x to {max(e.batch_ratios):.3f}x {against} (Kruskal-Wallis p={e.drift_p:.2g}), "
            f"so the interval {e.ci_low:.3f}-{e.ci_high:.3f} could not prove even a {2 * tolerance:.0%} change: "
            "one side ran slower for part of the time (a neighbour, the scheduler); re-run on a quieter machine"), e)
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


