"""From measurements to a verdict per (test, environment, mount). Pure: no pytest.

The rules, in order:

1. ``overhead``: the environment's ratio to native, measured in this session, has a
   lower confidence bound above its budget.
2. ``no-baseline``: nothing saved for this test in this environment's baseline.
3. ``unstable``: the baseline's sessions disagree with each other by more than the
   tolerance (between-session SD of log medians > log(1 + tolerance)): a change the size
   of the tolerance cannot be told from noise, so the test is not gated. The fix is to
   make the benchmark steadier or give it a larger tolerance.
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
    limit = math.log1p(policy.tolerance)
    if session_sd is not None and session_sd > limit:
        return Judgement(Verdict.UNSTABLE,
                         f"baseline sessions vary by {session_sd:.1%} (SD of log medians), more than the "
                         f"{policy.tolerance:.0%} tolerance; make it steadier or raise its tolerance",
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
