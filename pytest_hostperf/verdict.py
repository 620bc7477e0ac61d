"""From measurements to a verdict per (test, environment, mount). Pure: no pytest.

The rules, in order:

1. ``overhead``: the environment's ratio to native, measured in this session, has a
   lower confidence bound above its budget.
2. ``no-baseline``: nothing saved for this test in this environment's baseline.
3. ``unstable``: the baseline's sessions disagree with each other so much that the gate
   could not prove even a slowdown of twice the tolerance (the confidence interval's
   half-width, set by the between-session noise and the number of saved sessions, is
   wider than the step from 1+tol to 1+2*tol). Such a test is not gated: a failure
   would be luck, a pass meaningless. The reason says which tolerance would work; the
   fix is a steadier benchmark, more saved sessions, or that larger tolerance.
4. ``regression`` / ``improvement``: the simultaneous (Bonferroni) confidence interval of
   the ratio lies entirely beyond the tolerance. This implies significance at the
   session's family-wise level, so the false-alarm rate over all comparisons of a
   session stays at alpha.
   Unless the host itself ran slower than the tolerance around the measurement (its
   reference workload at both ends, :func:`host_slowdown`) and by enough to explain
   the slowdown: then ``unstable``.
5. ``inconclusive``: the point estimate is beyond the tolerance but the interval reaches
   back inside it: maybe a change, not proven. Not a failure.
6. ``pass``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

from pytest_hostperf.model import Verdict
from pytest_hostperf.stats import (
    SHORT_HISTORY,
    Distribution,
    RatioEstimate,
    SessionSummary,
    between_session_sd,
    compare_to_history,
)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How strict the gate is; one per test (tolerance and budgets can be per test)."""

    tolerance: float            # 0.05 = a slowdown must be more than 5% to fail
    alpha: float                # family-wise false-alarm rate of the session
    comparisons: int            # how many comparisons the session makes (Bonferroni)
    session_noise: float = 0.25  # prior between-session SD while fewer than SHORT_HISTORY sessions are saved
    max_overhead: float | None = None  # budget for ratio to native, e.g. 1.10

    @property
    def confidence(self) -> float:
        return 1.0 - 2.0 * self.alpha / max(1, self.comparisons)


@dataclasses.dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    to_baseline: RatioEstimate | None = None
    to_native: RatioEstimate | None = None
    baseline_sessions: int = 0
    session_sd: float | None = None
    blamed_on_host: bool = False  # a proven change that host slowness made `unstable`
    host_slowdown: float | None = None  # reference around the test / its usual speed in the baseline


def judge(
    current: SessionSummary,
    history: Sequence[SessionSummary],
    policy: Policy,
    to_native: RatioEstimate | None = None,
    baseline_name: str = "baseline",
    host_slowdown: float | None = None,
    host_noise: float | None = None,
) -> Judgement:
    """The verdict for one measurement; ``reason`` is the one line shown on failure.

    ``host_slowdown`` is how much slower than in the baseline's sessions the machine ran
    the reference workload around this measurement (see :func:`host_slowdown`): when the
    machine itself is slower than the tolerance, a change of the test cannot be
    attributed to the code, and a regression or improvement is reported as ``unstable``
    instead. ``host_noise`` is the standard deviation of the reference workload's log
    medians over the sessions: with a short history it raises the assumed session noise,
    and an ``unstable`` reason uses it to say whether the machine or the benchmark is
    the noise.
    """
    to_baseline = None
    session_sd = between_session_sd(history)
    if history:
        to_baseline = compare_to_history(current, history, policy.confidence, policy.session_noise, host_noise)

    def made(verdict: Verdict, reason: str, blamed_on_host: bool = False) -> Judgement:
        return Judgement(verdict, reason, to_baseline, to_native, len(history), session_sd, blamed_on_host,
                         host_slowdown)

    if to_native is not None and policy.max_overhead is not None and to_native.ci_low > policy.max_overhead:
        return made(Verdict.OVERHEAD, f"overhead {to_native.ratio:.2f}x native "
                                      f"(CI {to_native.ci_low:.2f}-{to_native.ci_high:.2f}) "
                                      f"exceeds budget {policy.max_overhead:.2f}x")
    if to_baseline is None:
        return made(Verdict.NO_BASELINE, "no saved baseline for this test here (save one with --hostperf-save)")
    slower_p, faster_p = to_baseline.p_slower, to_baseline.p_faster
    interval = (f"{to_baseline.ratio:.3f}x {baseline_name} "
                f"(CI {to_baseline.ci_low:.3f}-{to_baseline.ci_high:.3f} "
                f"at {to_baseline.confidence:.2%}, {{p}}, {to_baseline.method})")
    # A change proven beyond the tolerance is reported whatever the noise: the interval
    # already accounts for it. Unless the host itself changed speed meanwhile.
    # A slow host can explain a slowdown up to its own size (CPU-bound code slows about as
    # much as the reference), never a larger one, and never a speed-up.
    host_explains = (host_slowdown is not None and host_slowdown > 1 + policy.tolerance
                     and 1 + policy.tolerance < to_baseline.ci_low <= host_slowdown * (1 + policy.tolerance))
    if host_explains:
        assert host_slowdown is not None
        return made(Verdict.UNSTABLE,
                    f"host slow: the reference workload ran {host_slowdown:.2f}x its speed in the baseline around "
                    f"this test, more than the {policy.tolerance:.0%} tolerance, so the test's "
                    f"{to_baseline.ratio:.3f}x cannot be blamed on the code; re-run on a quiet machine, or "
                    "re-save the baseline if the machine changed for good", blamed_on_host=True)
    if to_baseline.ci_low > 1 + policy.tolerance:
        return made(Verdict.REGRESSION, f"regression: {interval.format(p=f'p={slower_p:.2g}')}, "
                                        f"tolerance {policy.tolerance:.0%}")
    if to_baseline.ci_high < 1 / (1 + policy.tolerance):
        return made(Verdict.IMPROVEMENT, f"improvement: {interval.format(p=f'p={faster_p:.2g}')}")
    short = _short_history_note(to_baseline, policy, len(history))
    unproven = _unenforceable(to_baseline, policy, session_sd, len(history))
    if unproven is not None:
        reason = unproven[1]
        if unproven[0] is Verdict.UNSTABLE and host_noise is not None and session_sd:
            reason += "; " + _noise_source(session_sd, host_noise)
        return made(unproven[0], reason + short)
    p_text = f"p={slower_p:.2g}" if to_baseline.ratio >= 1 else f"p={faster_p:.2g}"
    if to_baseline.ratio > 1 + policy.tolerance or to_baseline.ratio < 1 / (1 + policy.tolerance):
        return made(Verdict.INCONCLUSIVE, f"possible change, not proven: {interval.format(p=p_text)}{short}")
    return made(Verdict.PASS, interval.format(p=p_text) + short)


def _short_history_note(estimate: RatioEstimate, policy: Policy, sessions: int) -> str:
    """How little a history of fewer than SHORT_HISTORY sessions proves, in one clause."""
    if sessions >= SHORT_HISTORY:
        return ""
    half = math.log(estimate.ci_high) - math.log(estimate.ratio)
    slower = (1 + policy.tolerance) * math.exp(half)
    return (f"; only {sessions} saved session{'s' if sessions > 1 else ''}: a short history proves little, "
            f"only a change beyond {slower:.2f}x (or below {1 / slower:.2f}x) could be proven; save at least "
            f"{SHORT_HISTORY} sessions with --hostperf-save")


def _noise_source(session_sd: float, host_noise: float) -> str:
    """Whether the machine (its reference workload) varied as much as the benchmark did."""
    if host_noise >= session_sd / 2:
        return (f"the host's reference workload varied by {host_noise:.1%} over the same sessions, so the "
                "machine itself is that noisy (shared CPU, neighbours, power states): save baselines and "
                "gate on a quieter machine or with a larger tolerance")
    return (f"the host's reference workload was steadier ({host_noise:.1%}), so the benchmark itself varies "
            "between sessions (warm-up, caches, allocation, I/O)")


def host_slowdown(now: Sequence[SessionSummary], saved: Sequence[SessionSummary]) -> float | None:
    """How much slower than its usual speed the machine ran the reference workload.

    ``now`` holds the reference timed right before and right after a measurement, and
    the *faster* of them counts: slow at both ends means the machine was slow for longer
    than the test (a throttled CPU, a lasting neighbour), which is when a slower test
    says nothing about the code. A moment's slowness at one end is left to the
    re-measurement. The usual speed is the median of the references saved with this
    test's baseline sessions: the machine as it was when the baseline was measured.
    (Not its best: on a shared machine the quiet state itself spans +-10%, and against
    the best moment nearly every probe would read as slow.)
    """
    if not now or not saved:
        return None
    return min(s.median_s for s in now) / statistics.median(s.median_s for s in saved)


def _unenforceable(estimate: RatioEstimate, policy: Policy, session_sd: float | None,
                   sessions: int) -> tuple[Verdict, str] | None:
    """Why the interval is too wide to prove a slowdown of twice the tolerance, if it is.

    Two causes: the benchmark's session-to-session noise (more sessions will not help), or
    a short history (Student's t with few degrees of freedom). The normal quantile tells
    them apart: it is the interval's width with infinitely many saved sessions.
    """
    half_width = math.log(estimate.ci_high) - math.log(estimate.ratio)
    provable = math.log1p(2 * policy.tolerance) - math.log1p(policy.tolerance)
    if session_sd is None or half_width <= provable:
        return None
    noise = session_sd * Distribution().ppf(0.5 + estimate.confidence / 2)
    if noise > provable:
        # log1p(2t) - log1p(t) >= noise  <=>  t >= (e^noise - 1) / (2 - e^noise)
        if noise >= math.log(2) or math.expm1(noise) / (2 - math.exp(noise)) > 1:
            advice = "no practical tolerance works at this noise: steady the benchmark"
        else:
            advice = (f"steady the benchmark or set tolerance >= "
                      f"{math.ceil(100 * math.expm1(noise) / (2 - math.exp(noise)))}%")
        return Verdict.UNSTABLE, (
            f"baseline sessions vary by {session_sd:.1%} (SD of log medians over {sessions}); at "
            f"{estimate.confidence:.2%} confidence only slowdowns beyond "
            f"~{math.expm1(noise + math.log1p(policy.tolerance)):.0%} could be proven, so a "
            f"{policy.tolerance:.0%} tolerance is not enforceable: {advice}")
    if estimate.ratio > 1 + policy.tolerance:
        return Verdict.INCONCLUSIVE, (
            f"possible change, not proven: {estimate.ratio:.3f}x with only {sessions} baseline sessions "
            f"(CI {estimate.ci_low:.3f}-{estimate.ci_high:.3f}); save more sessions with --hostperf-save "
            "to gate at this tolerance")
    return None


__all__ = ["Verdict", "Policy", "Judgement", "judge", "host_slowdown"]
