"""The ratio to native from pairs: native and another environment in alternating halves.

A test that runs natively and in another environment (docker, qemu, ssh, a mount) is
measured by :class:`PairedToNative` instead of interleaved blocks (issue #10: three
blocks gave docker/native 0.63-1.49 for code whose container cost is nil, because a
machine's slow phases last longer than a block switch takes):

1. **calibrate** each side on its own: one call gives the time of a call, then one
   unmeasured half of ``N`` calls (warm caches, lazy fixtures) gives it again, warm;
   ``N`` makes a half last about ``round_s`` in that environment (a TCG VM runs ~10x
   slower, so its ``N`` is smaller; per-call times are compared);
2. **pairs**: for each pair of a :class:`~pytest_hostperf.pairing.PairSchedule`, one
   half of each side in the schedule's order, strictly one request at a time (two sides
   measured at once on a 2-core machine would measure each other). A half is a
   ``fixed`` run: the agent skips pytest-benchmark's calibration and times ``N`` calls
   in one round with pytest-benchmark's own timer, so the controller's round trip (a
   qemu serial line alone is ~6 ms) is never part of a timing;
3. **estimate**: :func:`pytest_hostperf.pairing.estimate` over the per-call times in the
   order measured (Hodges-Lehmann ratio, Wilcoxon interval, drift guard).

The halves are also the samples of each side's record (what baselines keep), so a
paired test costs about ``2 * side_s`` per comparison and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Mapping, Protocol

from pytest_hostperf import pairing
from pytest_hostperf.model import RatioEstimate

#: Per side and comparison of one test: about this much time in halves (0.4 s is 200
#: pairs of 2 ms rounds natively; the prototype's 300 pairs gave A/A intervals ~2% wide).
DEFAULT_SIDE_SECONDS = 0.4
#: Never fewer pairs than the drift guard needs (8 batches of 5): with 16-20 pairs and
#: the guard off, 1 of 5 A/A comparisons of a file-I/O test here read a false
#: `improvement` (benchmarks/results/paired-study.log, first run).
MIN_PAIRS = pairing.DRIFT_BATCHES * pairing.DRIFT_MIN_BATCH
#: Pairing's overhead may always take this long per comparison (40 pairs of ~0.1 s).
MIN_CAP_S = 10.0


@dataclasses.dataclass(frozen=True)
class PairBudget:
    """How long one half lasts and how much time each side of a comparison gets."""

    side_s: float = DEFAULT_SIDE_SECONDS
    round_s: float = pairing.DEFAULT_ROUND_SECONDS
    max_pairs: int = pairing.DEFAULT_PAIRS
    #: Rounds per half; a half's per-call time is their median. More than one was worse
    #: under load here (a longer half is more often cut by other tasks' time slices).
    rounds: int = 1
    #: Pairing is skipped for a target whose halves cost so much around their timed work
    #: (a TCG VM: a whole pytest request under emulation, ~0.3-0.5 s) that the least pairs
    #: would spend over this many budgets (and over MIN_CAP_S) on it; such a target is
    #: measured on its own instead. Long halves asked for (a CPU quota's) do not count.
    slow_factor: float = 10.0

    def worth_pairing(self, reference_overhead_s: float, candidate_overhead_s: float) -> bool:
        """Whether :data:`MIN_PAIRS` pairs with these per-half overheads fit the cap."""
        cap_s = max(self.slow_factor * 2 * self.side_s, MIN_CAP_S)
        return MIN_PAIRS * (reference_overhead_s + candidate_overhead_s) <= cap_s

    def iterations(self, call_s: float) -> int:
        """Calls per half so that a half lasts about ``round_s``."""
        if not (call_s > 0 and math.isfinite(call_s)):
            return 1
        return max(1, round(self.round_s / call_s))

    def least_pairs(self, confidence: float) -> int:
        """Never fewer pairs: :data:`MIN_PAIRS`, and enough to reach ``confidence`` at all."""
        return max(MIN_PAIRS, math.ceil(math.log2(2 / (1 - confidence))) + 1)

    def enough(self, pairs: int, elapsed_s: float, confidence: float) -> bool:
        """Whether a comparison may stop after ``pairs`` pairs that took ``elapsed_s`` (both sides)."""
        if pairs >= self.max_pairs:
            return True
        return pairs >= self.least_pairs(confidence) and elapsed_s >= 2 * self.side_s


class Measured(Protocol):
    """What the strategy needs of an attempt (:class:`pytest_hostperf.run.plan.Attempt`)."""

    samples: list[float]
    outcome: Any
    message: str
    reports: list[Mapping[str, Any]]
    mount_info: Mapping[str, Any]
    to_native: RatioEstimate | None

    @property
    def finished(self) -> bool: ...


#: Runs a request once into an attempt: ``run(request, attempt, options, fixed)``.
RunOnce = Callable[[Any, Any, Mapping[str, Any], Mapping[str, int] | None], None]


@dataclasses.dataclass
class Side:
    """One side of a paired comparison: its request, where its halves go, its half's size."""

    request: Any
    attempt: Measured
    iterations: int
    run: RunOnce         # how this side runs a request (its own agent)
    rounds: int = 1
    overhead_s: float = 0.0   # wall time of one warm half beyond its timed calls (round trip, harness)


def calibrate(request: Any, attempt: Measured, scratch: Callable[[], Measured], run: RunOnce,
              options: Mapping[str, Any], budget: PairBudget,
              clock: Callable[[], float] = time.monotonic) -> Side | None:
    """Size one side's half; None (the failure copied into ``attempt``) when the test does not run."""
    probe = scratch()
    run(request, probe, options, {"iterations": 1, "rounds": 1})
    if _copy_failure(probe, attempt):
        return None
    iterations = budget.iterations(min(probe.samples))
    warm = scratch()
    started = clock()
    run(request, warm, options, {"iterations": iterations, "rounds": 1})
    request_s = clock() - started
    if _copy_failure(warm, attempt):
        return None
    attempt.reports, attempt.mount_info = warm.reports, warm.mount_info
    # Sized from the warm half, a real one: a first call can run on a CPU quota's unused
    # share (or before a VM's vCPU is throttled) and would make every later half too long.
    overhead_s = max(0.0, request_s - sum(warm.samples) * iterations)
    return Side(request, attempt, budget.iterations(statistics.fmean(warm.samples)), run, budget.rounds, overhead_s)


def measure_pairs(reference: Side, candidate: Side, options: Mapping[str, Any], budget: PairBudget,
                  seed: str, confidence: float,
                  clock: Callable[[], float] = time.monotonic) -> pairing.PairedEstimate | None:
    """Pairs of halves in the schedule's order until the budget is spent; None when a side failed.

    The budget is wall-clock time (the round trips and the agent's own bookkeeping
    included), so a test costs about ``2 * side_s`` whatever the environment's transport;
    a schedule of ``max_pairs`` is cut there (its order is shuffled, so any stretch of it
    is nearly balanced).
    """
    times: dict[str, list[float]] = {"reference": [], "candidate": []}
    sides = {"reference": reference, "candidate": candidate}
    started = clock()
    for done, order in enumerate(pairing.PairSchedule(budget.max_pairs, seed), start=1):
        for name in order:
            per_call = half(sides[name], options)
            if per_call is None:
                return None
            times[name].append(per_call)
        if budget.enough(done, clock() - started, confidence):
            break
    return pairing.estimate(times["reference"], times["candidate"], confidence)


def half(side: Side, options: Mapping[str, Any]) -> float | None:
    """One fixed-work half; its per-call time (the median of its rounds), None when it failed."""
    before = len(side.attempt.samples)
    side.run(side.request, side.attempt, options, {"iterations": side.iterations, "rounds": side.rounds})
    new = side.attempt.samples[before:]
    if side.attempt.finished or not new:
        return None
    return statistics.median(new)


def as_ratio(estimate: pairing.PairedEstimate) -> RatioEstimate:
    """The record's form of a paired estimate (candidate / reference)."""
    return RatioEstimate(estimate.ratio, estimate.ci_low, estimate.ci_high, estimate.confidence,
                         estimate.p_slower, estimate.p_faster, estimate.method, pairs=estimate.pairs)


def _copy_failure(probe: Measured, attempt: Measured) -> bool:
    """Whether a calibration run failed or measured nothing; if so ``attempt`` says what happened."""
    if not probe.finished and probe.samples:
        return False
    attempt.outcome, attempt.message = probe.outcome, probe.message
    attempt.reports, attempt.mount_info = probe.reports, probe.mount_info
    return True
