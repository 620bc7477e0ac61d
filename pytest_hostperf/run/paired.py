"""The ratio to native from pairs: native and another environment in alternating halves.

A test that runs natively and in another environment (docker, qemu, ssh, a mount) is
measured by :class:`PairedToNative` instead of interleaved blocks (issue #10: three
blocks gave docker/native 0.63-1.49 for code whose container cost is nil, because a
machine's slow phases last longer than a block switch takes):

1. **calibrate** each side on its own: one call gives the time of a call, then one
   unmeasured half of ``N`` calls (warm caches, lazy fixtures) gives it again, warm;
   ``N`` makes a half last about ``round_s`` in that environment (a TCG VM runs ~10x
   slower, so its ``N`` is smaller; per-call times are compared);
2. **hold**: both sides' items are held inside their agents (:mod:`pytest_hostperf.agent.hold`),
   stopped in ``benchmark(...)`` with fixtures set up, and one warm half of each tells
   what a half costs around its timed calls (the round trip). A side that cannot be held
   (``benchmark.pedantic``, a plain function as agent in unit tests) makes both sides use
   whole ``fixed`` requests instead (pytest's runtest protocol around every half: ~10 ms
   natively, and under load it varies by more than the 2 ms of timed work);
3. **pairs**: for each pair of a :class:`~pytest_hostperf.pairing.PairSchedule`, one
   half of each side in the schedule's order, strictly one half at a time (two sides
   measured at once on a 2-core machine would measure each other). A half times ``N``
   calls in one round with pytest-benchmark's own runner and timer, inside the agent,
   so the controller's round trip (a qemu serial line alone is ~6 ms) is never part of
   a timing;
4. **estimate**: :func:`pytest_hostperf.pairing.estimate` over the per-call times in the
   order measured (Hodges-Lehmann ratio, Wilcoxon interval, drift guard).

The halves are also the samples of each side's record (what baselines keep), so a
paired test costs about ``2 * side_s`` per comparison and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

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
#: A target with a CPU quota is timed in rounds of this much native CPU work, this many
#: (:func:`sustained_work`): at half a CPU that is 5 rounds of ~0.5 s.
SUSTAINED_ROUND_S = 0.25
SUSTAINED_ROUNDS = 5


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


class HeldItem(Protocol):
    """An item held in its agent (:class:`pytest_hostperf.run.roundtrip.Held`)."""

    cpu: int | None   # the CPU it is pinned to, if it is

    def half(self, iterations: int, rounds: int = 1) -> list[float] | None: ...

    def release(self) -> None: ...


#: Holds an item for halves: ``hold(request, attempt, options, fixed)``; None: it answered at once.
HoldOpen = Callable[[Any, Any, Mapping[str, Any], Mapping[str, int]], HeldItem | None]


def hold_of(run: RunOnce) -> HoldOpen | None:
    """How ``run``'s agents hold an item (:meth:`RoundTrips.hold`); None for a plain function."""
    hold = getattr(run, "hold", None)
    return hold if callable(hold) else None


@dataclasses.dataclass
class Side:
    """One side of a paired comparison: its request, where its halves go, its half's size."""

    request: Any
    attempt: Measured
    iterations: int
    run: RunOnce         # how this side runs a request (its own agent)
    rounds: int = 1
    overhead_s: float = 0.0   # wall time of one warm half beyond its timed calls (round trip, harness)
    hold: HoldOpen | None = None
    call_s: float = 0.0       # one call's time in the warm calibration half

    @property
    def fixed(self) -> dict[str, int]:
        return {"iterations": self.iterations, "rounds": self.rounds}


@dataclasses.dataclass
class Halves:
    """Asks one side for halves: from its held item, else as whole requests."""

    side: Side
    options: Mapping[str, Any]
    held: HeldItem | None = None

    def __call__(self) -> float | None:
        """One half's per-call time (the median of its rounds); None when the side failed."""
        if self.held is None:
            return half(self.side, self.options)
        samples = self.held.half(self.side.iterations, self.side.rounds)
        return statistics.median(samples) if samples else None

    def release(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None

    def how(self) -> str:
        """How this side's halves are asked, for the record's method."""
        if self.held is None:
            return "whole requests"
        return f"held items on CPU {self.held.cpu}" if self.held.cpu is not None else "held items, not pinned"


@contextlib.contextmanager
def opened(reference: Side, candidate: Side, options: Mapping[str, Any],
           clock: Callable[[], float] = time.monotonic) -> Iterator[tuple[Halves, Halves]]:
    """Both sides' halves, held when both can be; released (the tests finish) at the end.

    Held, each side's ``overhead_s`` becomes what one warm held half costs beyond its
    timed calls (the round trip), which decides whether pairing is worth it.
    """
    halves = (Halves(reference, options), Halves(candidate, options))
    try:
        if reference.hold is not None and candidate.hold is not None:
            for side_halves in halves:
                side = side_halves.side
                side_halves.held = side.hold(side.request, side.attempt, options, side.fixed) if side.hold else None
                if side_halves.held is None:
                    break
            if any(h.held is None for h in halves):
                for side_halves in halves:  # both sides alike, or neither
                    side_halves.release()
            else:
                for side_halves in halves:
                    _time_warm_half(side_halves, clock)
        yield halves
    finally:
        for side_halves in halves:
            side_halves.release()


def _time_warm_half(halves: Halves, clock: Callable[[], float]) -> None:
    """One unmeasured held half: its cost around the timed calls becomes the side's overhead."""
    side = halves.side
    before = len(side.attempt.samples)
    started = clock()
    per_call = halves()
    wall_s = clock() - started
    del side.attempt.samples[before:]
    if per_call is not None:
        side.overhead_s = max(0.0, wall_s - per_call * side.iterations * side.rounds)


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
    call_s = statistics.fmean(warm.samples)
    return Side(request, attempt, budget.iterations(call_s), run, budget.rounds, overhead_s, hold_of(run), call_s)


def sustained_work(reference: Side) -> dict[str, int]:
    """Fixed work for a target with a CPU quota: rounds of ~:data:`SUSTAINED_ROUND_S` of native's calls.

    A quota binds only a load that lasts longer than its period (100 ms): the pause it
    imposes must fall inside the timed rounds, not between them. Rounds of a few ms,
    back to back, mostly fit one period's share and read as unthrottled (half a CPU
    read ~1.0x at the median); rounds of 0.25 s of CPU work span several periods.
    """
    call_s = reference.call_s if reference.call_s > 0 else SUSTAINED_ROUND_S
    return {"iterations": max(1, math.ceil(SUSTAINED_ROUND_S / call_s)), "rounds": SUSTAINED_ROUNDS}


def measure_pairs(halves: tuple[Halves, Halves], budget: PairBudget, seed: str, confidence: float,
                  clock: Callable[[], float] = time.monotonic) -> pairing.PairedEstimate | None:
    """Pairs of halves in the schedule's order until the budget is spent; None when a side failed.

    The budget is wall-clock time (the round trips and the agent's own bookkeeping
    included), so a test costs about ``2 * side_s`` whatever the environment's transport;
    a schedule of ``max_pairs`` is cut there (its order is shuffled, so any stretch of it
    is nearly balanced).
    """
    times: dict[str, list[float]] = {"reference": [], "candidate": []}
    ask = {"reference": halves[0], "candidate": halves[1]}
    if any(h.side.attempt.finished for h in halves):
        return None
    started = clock()
    for done, order in enumerate(pairing.PairSchedule(budget.max_pairs, seed), start=1):
        for name in order:
            per_call = ask[name]()
            if per_call is None:
                return None
            times[name].append(per_call)
        if budget.enough(done, clock() - started, confidence):
            break
    estimate = pairing.estimate(times["reference"], times["candidate"], confidence)
    how = " / ".join(dict.fromkeys(h.how() for h in halves))
    return dataclasses.replace(estimate, method=f"{estimate.method}; halves from {how}")


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
