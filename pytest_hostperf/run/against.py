"""``--hostperf-against=REV``: the working tree against a git revision, in pairs, per environment.

REV's tree (:func:`pytest_hostperf.revision.materialize`) gets agents of its own, one per
environment, in a second :class:`~pytest_hostperf.run.pool.EnvironmentPool` whose
project directory is REV's; its agents put the session's import roots (relative to
their project directory: REV's ``src/``, REV's top) first on ``sys.path``, so they
import REV's code even when the working tree is installed. For each item,
:class:`AgainstRevision` sizes REV's half, warms the working tree's side with the same
work (identical code must do identical work), and measures random-order pairs of the
two agents, one request at a time; the paired judgement (:func:`pytest_hostperf.pairing.judge`) is the item's verdict.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from pytest_hostperf import pairing
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.model import Against, Outcome
from pytest_hostperf.revision import Revision
from pytest_hostperf.run import paired
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool


def revision_args(args: AgentArgs, project_dir: Path) -> AgentArgs:
    """The working tree's test files that exist at REV (a file added since is absent there)."""
    return dataclasses.replace(args, test_files=tuple(f for f in args.test_files if (project_dir / f).exists()))


@dataclasses.dataclass
class AgainstRevision:
    """Compares one item's working-tree side with REV's, in pairs."""

    revision: Revision
    pool: EnvironmentPool      # REV's agents
    args: AgentArgs            # what REV's agents collect
    budget: paired.PairBudget
    confidence: float
    seed: str

    @property
    def short(self) -> str:
        return self.revision.sha[:12]

    def compare(self, request: Any, tolerance: float, current: paired.RunOnce, at_rev: paired.RunOnce,
                scratch: Callable[[], paired.Measured], options: Mapping[str, Any],
                fresh: Callable[[], bool] = lambda: False) -> Against:
        """The paired comparison of ``request``: working tree (candidate) / REV (reference).

        A proven change is measured again by fresh agents when ``fresh()`` starts them
        (False: too costly there, a VM): see :func:`_repeated`.
        """
        env = request.target.env
        if not self.args.test_files:
            return self._without("absent", f"not at REV {self.short}: added since (no comparison)")
        try:
            client = self.pool.agent(env, self.args)
        except EnvironmentFailure as exc:
            tail = getattr(exc, "log_tail", "") or ""
            return self._without(f"{exc}\n{tail}".strip(), f"REV {self.short} could not run in {env}: "
                                                             f"{_first_line(str(exc))}")
        if request.test not in (client.hello.get("collected") or ()):
            return self._without("absent", f"not at REV {self.short}: added since (no comparison)")
        estimate = self._pairs(request, current, at_rev, scratch, options)
        if isinstance(estimate, Against):
            return estimate
        judged = pairing.judge(estimate, tolerance, against=self.short)
        if judged.verdict in ("regression", "improvement") and fresh():
            again = self._pairs(request, current, at_rev, scratch, options)
            if not isinstance(again, Against):
                judged = _repeated(judged, again, tolerance, self.short)
        return Against(self.revision.sha, estimate.ratio, (estimate.ci_low, estimate.ci_high), estimate.p_slower,
                       estimate.pairs, judged.verdict, judged.reason, None, estimate.confidence, estimate.spread,
                       estimate.drift_p, estimate.batch_ratios, estimate.p_faster)

    def _pairs(self, request: Any, current: paired.RunOnce, at_rev: paired.RunOnce,
               scratch: Callable[[], paired.Measured], options: Mapping[str, Any]) -> pairing.PairedEstimate | Against:
        """REV's side calibrated, the working tree's warmed with the same work, then the pairs."""
        rev_attempt = scratch()
        reference = paired.calibrate(request, rev_attempt, scratch, at_rev, options, self.budget)
        if reference is None:
            failure = _failure_text(rev_attempt)
            if rev_attempt.outcome is Outcome.PASSED:
                failure = "the test does not call the benchmark fixture there"
            return self._without(failure, f"fails at REV {self.short}: {_first_line(failure)}")
        candidate = paired.Side(request, scratch(), reference.iterations, current, reference.rounds,
                                hold=paired.hold_of(current))
        if paired.half(candidate, options) is None:  # the working tree's unmeasured half
            return self._without("the working tree's side failed", "the working tree's side failed while pairing")
        candidate.attempt.samples.clear()
        with paired.opened(reference, candidate, options) as halves:
            estimate = paired.measure_pairs(halves, self.budget, f"{self.seed}:{request.item_id}", self.confidence)
        if estimate is None:
            return self._without("a side failed while pairing", "a side failed while pairing (no comparison)")
        return estimate

    def _without(self, error: str, reason: str) -> Against:
        return Against(self.revision.sha, verdict="no-baseline", reason=reason, error=error)


def _repeated(judged: pairing.PairedJudgement, again: pairing.PairedEstimate, tolerance: float,
              rev: str) -> pairing.PairedJudgement:
    """The verdict once fresh agents measured the change again.

    Two processes running the same code can differ for good (where their heaps and code
    land): an allocation-heavy A/A test read 0.908x [0.899, 0.919] once in ten sessions
    here, and fresh processes of the same code spread over +-7%. So a proven change stands
    only when a fresh pair of agents also measures it beyond half the tolerance, in the
    same direction; otherwise it is ``inconclusive``, and the reason says both figures.
    """
    slower = judged.verdict == "regression"
    half = 1 + tolerance / 2
    if (again.ratio > half) if slower else (again.ratio < 1 / half):
        return dataclasses.replace(judged, reason=f"{judged.reason}; repeated by fresh agents: {again.ratio:.3f}x")
    return pairing.PairedJudgement("inconclusive", (
        f"not repeated: {judged.estimate.ratio:.3f}x {rev} (CI {judged.estimate.ci_low:.3f}-"
        f"{judged.estimate.ci_high:.3f}) in the session's agents, {again.ratio:.3f}x (CI {again.ci_low:.3f}-"
        f"{again.ci_high:.3f}) in fresh ones: the difference came with the processes (where their heaps and "
        f"code landed), not reliably with the code"), judged.estimate)


def _failure_text(attempt: paired.Measured) -> str:
    """What REV's run said: its message, else the crash line of its failed report."""
    texts = [attempt.message] if attempt.message else []
    for report in attempt.reports:
        longrepr = report.get("longrepr") if report.get("outcome") == "failed" else None
        crash = longrepr.get("reprcrash") if isinstance(longrepr, Mapping) else None
        if isinstance(crash, Mapping) and crash.get("message"):
            texts.append(str(crash["message"]))
        elif isinstance(longrepr, str):
            texts.append(longrepr)
    return "\n".join(texts) or f"outcome {getattr(attempt.outcome, 'value', attempt.outcome)}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""
