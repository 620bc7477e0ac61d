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
5. ``inconclusive``: the point estimate is beyond the tolerance but the interval reaches
   back inside it: maybe a change, not proven. Not a failure.
6. ``pass``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Sequence

from pytest_hostperf.stats import RatioEstimate, SessionSummary, between_session_sd, compare_to_history


class Verdict(str, enum.Enum):
    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    OVERHEAD = "overhead"
    INCONCLUSIVE = "inconclusive"
    UNSTABLE = "unstable"
    NO_BASELINE = "no-baseline"

    @property
    def fails(self) -> bool:
        return self in (Verdict.REGRESSION, Verdict.OVERHEAD)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How strict the gate is; one per test (tolerance and budgets can be per test)."""

    tolerance: float            # 0.05 = a slowdown must be more than 5% to fail
    alpha: float                # family-wise false-alarm rate of the session
    comparisons: int            # how many comparisons the session makes (Bonferroni)
    session_noise: float = 0.03  # prior between-session SD when only one session is saved
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


def judge(
    current: SessionSummary,
    history: Sequence[SessionSummary],
    policy: Policy,
    to_native: RatioEstimate | None = None,
    baseline_name: str = "baseline",
) -> Judgement:
    """The verdict for one measurement; ``reason`` is the one line shown on failure."""
    to_baseline = None
    session_sd = between_session_sd(history)
    if history:
        to_baseline = compare_to_history(current, history, policy.confidence, policy.session_noise)
    common = dict(to_baseline=to_baseline, to_native=to_native,
                  baseline_sessions=len(history), session_sd=session_sd)

    if to_native is not None and policy.max_overhead is not None and to_native.ci_low > policy.max_overhead:
        return Judgement(Verdict.OVERHEAD,
                         f"overhead {to_native.ratio:.2f}x native "
                         f"(CI {to_native.ci_low:.2f}-{to_native.ci_high:.2f}) exceeds budget {policy.max_overhead:.2f}x",
                         **common)
    if to_baseline is None:
        return Judgement(Verdict.NO_BASELINE, "no saved baseline for this test here (save one with --hostperf-save)",
                         **common)
    half_width = math.log(to_baseline.ci_high) - math.log(to_baseline.ratio)
    provable = math.log1p(2 * policy.tolerance) - math.log1p(policy.tolerance)
    if session_sd is not None and half_width > provable:
        # Wide for one of two reasons: the benchmark is noisy (more sessions will not
        # help much), or the history is short (Student's t with few degrees of freedom).
        # The normal quantile tells them apart: it is what infinitely many sessions give.
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + to_baseline.confidence / 2))
        if session_sd * z > provable:
            return Judgement(Verdict.UNSTABLE,
                             f"baseline sessions vary by {session_sd:.1%} (SD of log medians over {len(history)}); "
                             f"at {to_baseline.confidence:.2%} confidence only slowdowns beyond "
                             f"~{math.expm1(session_sd * z + math.log1p(policy.tolerance)):.0%} could be proven, so "
                             f"a {policy.tolerance:.0%} tolerance is not enforceable: steady the benchmark or set "
                             f"tolerance >= {math.expm1(session_sd * z) + 0.01:.0%}",
                             **common)
        if to_baseline.ratio > 1 + policy.tolerance:
            return Judgement(Verdict.INCONCLUSIVE,
                             f"possible change, not proven: {to_baseline.ratio:.3f}x with only {len(history)} "
                             f"baseline sessions (CI {to_baseline.ci_low:.3f}-{to_baseline.ci_high:.3f}); "
                             "save more sessions with --hostperf-save to gate at this tolerance",
                             **common)
    summary = (f"{to_baseline.ratio:.3f}x {baseline_name} (CI {to_baseline.ci_low:.3f}-{to_baseline.ci_high:.3f} "
               f"at {to_baseline.confidence:.2%}, p={to_baseline.p_slower:.2g}, {to_baseline.method})")
    if to_baseline.ci_low > 1 + policy.tolerance:
        return Judgement(Verdict.REGRESSION, f"regression: {summary}, tolerance {policy.tolerance:.0%}", **common)
    if to_baseline.ci_high < 1 / (1 + policy.tolerance):
        return Judgement(Verdict.IMPROVEMENT, f"improvement: {summary}", **common)
    if to_baseline.ratio > 1 + policy.tolerance or to_baseline.ratio < 1 / (1 + policy.tolerance):
        return Judgement(Verdict.INCONCLUSIVE, f"possible change, not proven: {summary}", **common)
    return Judgement(Verdict.PASS, summary, **common)
