"""The measurement plan: what to measure, in which order, and when to measure again.

The controller hands over one :class:`Plan` (the collected requests, what agents collect,
pytest-benchmark's options). :class:`PlanRunner` measures one test at a time on all its
targets:

1. the host's reference workload in each environment, right before the test;
2. the test's rounds, ordered by a :class:`Strategy`: :class:`PairedToNative` (the
   default when a test runs natively and elsewhere: random-order pairs of fixed-work
   halves of native and each other target, the ratio to native from the pairs;
   :mod:`pytest_hostperf.run.paired`), else :class:`InterleavedBlocks` (native,
   docker, qemu, native, docker, qemu, ...);
3. the reference again, right after;
4. the verdicts (:class:`~pytest_hostperf.run.judge.Judge`), then a confirmation: a test
   that reads as a regression is measured again after a pause and the fastest attempt
   is judged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from pytest_hostperf.agent.protocol import ProtocolError
from pytest_hostperf.baselines import BaselineError
from pytest_hostperf.environments.base import AgentDied, AgentTimeout, EnvironmentFailure
from pytest_hostperf.model import Against, Outcome, RatioEstimate, Record, SessionSummary, Verdict
from pytest_hostperf.run import paired
from pytest_hostperf.run.answers import MalformedAnswer, timings
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool, EnvironmentState, boots_a_vm
from pytest_hostperf.run.roundtrip import RoundTrips, pair_cpu
from pytest_hostperf.settings import Settings
from pytest_hostperf.stats import summarize
from pytest_hostperf.targets import Target
from pytest_hostperf.verdict import Judgement, Policy

if TYPE_CHECKING:
    from pytest_hostperf.run.against import AgainstRevision

#: Rounds of the reference workload per test and environment (~1 ms each natively).
REFERENCE_ROUNDS = 15
#: A reference timed this recently (the previous test's "after") serves as the next
#: test's "before": nothing but the controller's bookkeeping ran in between.
REFERENCE_REUSE_S = 0.5
#: Pause before re-measuring a regression (--hostperf-confirm): longer than most of a
#: shared machine's slow phases (median ~0.1 s, longest ~2 s measured here).
CONFIRM_PAUSE_S = 1.0
#: pytest-benchmark options forwarded to every agent (plain values only).
FORWARDED_BENCHMARK_OPTIONS = ("max_time", "min_rounds", "min_time", "calibration_precision",
                               "disable_gc", "warmup", "warmup_iterations")


@dataclasses.dataclass(frozen=True)
class Request:
    """One item to measure: a test (as the agent knows it) on one target."""

    item_id: str
    test: str
    target: Target
    tolerance: float | None = None
    max_overhead: Mapping[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the controller collected, handed over once after collection."""

    requests: tuple[Request, ...]
    agent_args: AgentArgs
    benchmark_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def comparisons(self) -> int:
        """How many (test x environment x mount) comparisons the session makes (Bonferroni)."""
        return max(1, len(self.requests))

    def group(self, test: str) -> list[Request]:
        """All targets of one test, in collection order."""
        return list(self._groups.get(test, ()))

    @functools.cached_property
    def _groups(self) -> dict[str, list[Request]]:
        groups: dict[str, list[Request]] = {}
        for request in self.requests:
            groups.setdefault(request.test, []).append(request)
        return groups

    @property
    def envs(self) -> list[str]:
        return list(dict.fromkeys(r.target.env for r in self.requests))

    def mounts_by_env(self) -> dict[str, list[str]]:
        """The mounts each environment's items use, in collection order."""
        found: dict[str, list[str]] = {env: [] for env in self.envs}
        for request in self.requests:
            mount = request.target.mount
            if mount is not None and mount not in found[request.target.env]:
                found[request.target.env].append(mount)
        return found


@dataclasses.dataclass
class Attempt:
    """One measurement of one item, filled in while its rounds come in (private to the run)."""

    request: Request
    outcome: Outcome | None = None      # None while nothing went wrong yet
    message: str = ""
    reports: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    samples: list[float] = dataclasses.field(default_factory=list)
    iterations: int = 1
    orchestration_s: list[float] = dataclasses.field(default_factory=list)
    mount_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference_before: SessionSummary | None = None
    reference_after: SessionSummary | None = None
    judgement: Judgement | None = None
    to_native: RatioEstimate | None = None  # from pairs with native (PairedToNative)
    against: Against | None = None          # the pairs with REV (--hostperf-against)

    @property
    def finished(self) -> bool:
        """Failed, skipped or errored: no further rounds for it."""
        return self.outcome not in (None, Outcome.PASSED)

    @property
    def references(self) -> tuple[SessionSummary, ...]:
        return tuple(r for r in (self.reference_before, self.reference_after) if r is not None)

    @property
    def median_s(self) -> float:
        return summarize(self.samples).median_s if self.samples else math.inf

    def fail(self, outcome: Outcome, message: str) -> None:
        self.outcome = outcome
        self.message = message


class Rounds(Protocol):
    """What a strategy may do: run one request once, with the given benchmark options.

    ``fixed``: ``{"iterations": N, "rounds": R}`` makes the agent skip pytest-benchmark's
    calibration and time R rounds of N calls (one half of a pair).
    """

    def __call__(self, request: Request, attempt: Attempt, options: Mapping[str, Any],
                 fixed: Mapping[str, int] | None = None) -> None: ...


class Strategy(Protocol):
    """Orders the rounds of one test's targets; returns one attempt per request."""

    def measure(self, requests: Sequence[Request], run: Rounds,
                options: Mapping[str, Any]) -> dict[str, Attempt]: ...


@dataclasses.dataclass(frozen=True)
class InterleavedBlocks:
    """Each target in turn, ``blocks`` times, each block a share of the time budget."""

    blocks: int

    def measure(self, requests: Sequence[Request], run: Rounds,
                options: Mapping[str, Any]) -> dict[str, Attempt]:
        attempts = {r.item_id: Attempt(r) for r in requests}
        blocks = self.blocks if len({r.target.env for r in requests}) > 1 else 1
        options = dict(options)
        if blocks > 1 and "max_time" in options:
            options["max_time"] = float(options["max_time"]) / blocks
        for _ in range(blocks):
            for request in requests:
                attempt = attempts[request.item_id]
                if not attempt.finished:
                    run(request, attempt, options)
        return attempts


@dataclasses.dataclass(frozen=True)
class PairedToNative:
    """Native and each other target in random-order pairs of fixed-work halves.

    The halves are every side's samples; each non-native attempt gets ``to_native``, the
    paired estimate of its ratio to native (:mod:`pytest_hostperf.run.paired`). A test
    without a native target (or with nothing else) is measured by ``fallback``.
    """

    budget: paired.PairBudget
    confidence: float
    seed: str
    fallback: Strategy
    clock: Callable[[], float] = time.monotonic
    #: An environment's CPU quota (None: none), known once its agent is ready. A target
    #: whose quota differs from native's is measured on its own, in sustained rounds: a
    #: quota binds only a sustained load, and pairs give each side idle time (the other
    #: side's half) that the quota refunds. Measured: 0.1 CPU read 1.05x native in pairs
    #: of 10 ms halves, and half a CPU would never bind halves that run under half the time.
    quota: Callable[[Request], float | None] = lambda request: None

    def measure(self, requests: Sequence[Request], run: Rounds,
                options: Mapping[str, Any]) -> dict[str, Attempt]:
        native = next((r for r in requests if r.target.kind == "native"), None)
        others = [r for r in requests if r.target.kind != "native"]
        if native is None or not others:
            return self.fallback.measure(requests, run, options)
        attempts = {r.item_id: Attempt(r) for r in requests}
        sides = {r.item_id: paired.calibrate(r, attempts[r.item_id], functools.partial(Attempt, r), run, options,
                                             self.budget, self.clock) for r in requests}
        reference = sides[native.item_id]
        sustained: dict[str, dict[str, int]] = {}
        for other in others:
            candidate, attempt = sides[other.item_id], attempts[other.item_id]
            if reference is None or reference.attempt.finished or candidate is None:
                continue
            if self.quota(other) != self.quota(native):
                sustained[other.item_id] = paired.sustained_work(reference)
                continue   # measured on its own below, in sustained rounds
            with paired.opened(reference, candidate, options, self.clock) as halves:
                if not self.budget.worth_pairing(reference.overhead_s, candidate.overhead_s):
                    continue   # too slow to ask (a TCG VM): measured on its own below, the interleaved way
                estimate = paired.measure_pairs(halves, self.budget, f"{self.seed}:{other.item_id}",
                                                self.confidence, self.clock)
            if estimate is not None:
                attempt.to_native = paired.as_ratio(estimate)
        for request in requests:  # a side left without a partner is measured on its own
            if sides[request.item_id] is not None and not attempts[request.item_id].samples:
                run(request, attempts[request.item_id], options, sustained.get(request.item_id))
        return attempts


class Judging(Protocol):
    """What the runner needs from the judge (:class:`pytest_hostperf.run.judge.Judge`)."""

    def judge(self, attempt: Attempt, state: EnvironmentState, native: Sequence[float] = (),
              to_native: RatioEstimate | None = None) -> Judgement | None: ...

    def record(self, attempt: Attempt, state: EnvironmentState, attempts: Sequence[Attempt] = ()) -> Record: ...

    def has_baseline(self, state: EnvironmentState) -> bool: ...


class PlanRunner:
    """Measures and judges one test at a time, as the plan says."""

    def __init__(self, plan: Plan, pool: EnvironmentPool, judge: Judging, settings: Settings,
                 strategy: Strategy | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, against: AgainstRevision | None = None) -> None:
        self.plan = plan
        self.against = against
        self.pool = pool
        self.judge = judge
        self.settings = settings
        blocks = InterleavedBlocks(settings.blocks)
        self.strategy: Strategy = strategy or (blocks if settings.pair_budget_s <= 0 else PairedToNative(
            paired.PairBudget(settings.pair_budget_s, settings.pair_round_s),
            Policy(settings.tolerance, settings.alpha, plan.comparisons).confidence,
            pool.context.session_id, blocks, clock,
            lambda request: pool.state(request.target.env).fingerprint.get("cpu_quota")))
        cpu = pair_cpu(pool.context.session_id)
        self.trips = RoundTrips(pool, plan.agent_args, settings, pool.code, cpu=cpu)
        self._rev_trips = RoundTrips(against.pool, against.args, settings, pool.code, cpu=cpu) if against else None
        self._sleep = sleep
        self._clock = clock
        self._last_reference: dict[str, tuple[float, SessionSummary]] = {}

    def run_test(self, test: str) -> list[Record]:
        """Measure every target of ``test`` (interleaved), judge, confirm; one record each."""
        requests = self.plan.group(test)
        self.pool.wait_for_prestarts()  # measure nothing while an environment still boots
        before = self._time_references(requests, reuse=True)
        attempts = self.strategy.measure(requests, self.trips, self.plan.benchmark_options)
        after = self._time_references(requests)
        for attempt in attempts.values():
            env = attempt.request.target.env
            attempt.reference_before, attempt.reference_after = before.get(env), after.get(env)
        native = next((a.samples for a in attempts.values() if a.request.target.kind == "native"
                       and a.outcome is Outcome.PASSED and a.samples), [])
        if self.against is not None:
            self._compare_with_revision(self.against, attempts.values())
        records = []
        for request in requests:
            chosen, tried = self._judged(attempts[request.item_id], native)
            chosen.against = attempts[request.item_id].against
            records.append(self.judge.record(chosen, self.pool.state(request.target.env), tried))
        return records

    def _compare_with_revision(self, against: AgainstRevision, attempts: Iterable[Attempt]) -> None:
        """Each measured item against REV, in pairs (--hostperf-against)."""
        for attempt in attempts:
            request = attempt.request
            if attempt.outcome is not Outcome.PASSED or not attempt.samples:
                continue  # a failing working tree is an ordinary failure: nothing to pair
            against.pool.wait_for_prestarts()
            attempt.against = against.compare(
                request, request.tolerance if request.tolerance is not None else self.settings.tolerance,
                self.trips, self._rev_trips or self.trips, functools.partial(Attempt, request),
                self.plan.benchmark_options, functools.partial(self._fresh_agents, against, request.target.env))

    def _fresh_agents(self, against: AgainstRevision, env: str) -> bool:
        """Restart both agents of ``env`` (the next request starts new ones).

        False for a VM (a boot), and where agents start without address-space
        randomisation on both sides (native): fresh agents would land where these did.
        """
        if boots_a_vm(env) or (self.pool.state(env).backend.fixed_layout
                               and against.pool.state(env).backend.fixed_layout):
            return False
        self.pool.restart(env)
        against.pool.restart(env)
        return True

    # -- judging and confirming ---------------------------------------------------------------

    def _judged(self, first: Attempt, native: Sequence[float]) -> tuple[Attempt, list[Attempt]]:
        """Judge ``first``; re-measure a regression up to ``confirm`` times; the chosen attempt.

        Baselines hold typical sessions. On a shared host a test can run while the
        machine is slow for a moment (here: pure Python runs up to 1.6x slower in phases
        of milliseconds to seconds that come from outside the VM;
        ``benchmarks/machine_noise.py``), and that reads as a regression. A real
        regression is slow in every attempt; a moment's slowness is gone in one of them.
        A proven change that the host guard blamed on the machine is re-measured too: if
        the machine is back to speed and the test is still slow, it is the code.
        """
        if not self._judge(first, native, first.to_native):
            return first, [first]
        attempts, chosen = [first], first
        to_native = first.judgement.to_native if first.judgement else None
        while _worth_re_measuring(chosen) and len(attempts) <= self.settings.confirm:
            self._sleep(CONFIRM_PAUSE_S)
            request = first.request
            retry = Attempt(request)
            env = request.target.env
            retry.reference_before = self._time_references([request]).get(env)
            self.trips(request, retry, self.plan.benchmark_options)
            if retry.outcome is not Outcome.PASSED or not retry.samples:
                break  # the first attempt's verdict stands; a flaky re-run is not evidence
            retry.reference_after = self._time_references([request]).get(env)
            if not self._judge(retry, native, to_native):
                break
            attempts.append(retry)
            chosen = _fastest_trusted(attempts)
        return chosen, attempts

    def _judge(self, attempt: Attempt, native: Sequence[float], to_native: RatioEstimate | None = None) -> bool:
        """Set the attempt's judgement; False when it cannot be judged (an unreadable baseline)."""
        try:
            attempt.judgement = self.judge.judge(attempt, self.pool.state(attempt.request.target.env),
                                                 native, to_native)
        except BaselineError as exc:
            attempt.fail(Outcome.ERROR, f"hostperf: the gate is off for this item: {exc}")
            return False
        return attempt.judgement is not None

    def _time_references(self, requests: Sequence[Request], reuse: bool = False) -> dict[str, SessionSummary]:
        """Time the reference workload in each environment of ``requests``, now.

        Its ratio to the reference saved with the baseline tells whether the host itself
        is off its usual speed (:func:`~pytest_hostperf.verdict.host_slowdown`); a failure
        here is left to the test run to report. ``reuse``: the previous test's "after"
        serves when it is recent.
        """
        timings_now: dict[str, SessionSummary] = {}
        for env in dict.fromkeys(r.target.env for r in requests):
            state = self.pool.state(env)
            if not self.settings.save and not self.judge.has_baseline(state):
                continue  # nothing to compare it with and nothing to save it for
            recent = self._last_reference.get(env)
            if reuse and recent is not None and self._clock() - recent[0] <= REFERENCE_REUSE_S:
                timings_now[env] = recent[1]
                continue
            try:
                answer = self.pool.agent(env, self.plan.agent_args).request(
                    {"op": "reference", "rounds": REFERENCE_ROUNDS}, "reference", self.settings.timeout_s,
                    "timing the reference workload")
                summary = summarize(timings(answer.get("samples"), "reference samples"))
            except (EnvironmentFailure, AgentDied, AgentTimeout, ProtocolError, MalformedAnswer, ValueError):
                continue
            self._last_reference[env] = (self._clock(), summary)
            timings_now[env] = summary
        return timings_now


def _fastest_trusted(attempts: Sequence[Attempt]) -> Attempt:
    """The fastest attempt measured while the machine was at speed, else the fastest."""
    trusted = [a for a in attempts if not (a.judgement and a.judgement.blamed_on_host)]
    return min(trusted or attempts, key=lambda a: a.median_s)


def _worth_re_measuring(attempt: Attempt) -> bool:
    judgement = attempt.judgement
    return judgement is not None and (judgement.verdict is Verdict.REGRESSION or judgement.blamed_on_host)
