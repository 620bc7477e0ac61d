"""From measurements to records: baseline lookup, ratio to native, the verdict, the record.

The rules themselves are the pure :func:`pytest_hostperf.verdict.judge`; this module
gathers what they need for one item (its environment's baseline file and history, the
host reference saved with it, the overhead budget, native's samples of the same test)
and writes the one :class:`~pytest_hostperf.model.Record` of the item.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf.baselines import BaselineError, BaselineFile, BaselineStore, SavedSession, read_baseline
from pytest_hostperf.fingerprint import mismatches, mount_signature
from pytest_hostperf.model import Outcome, RatioEstimate, Record, Verdict
from pytest_hostperf.report.terminal import format_seconds
from pytest_hostperf.run.plan import Attempt, Request
from pytest_hostperf.run.pool import EnvironmentState
from pytest_hostperf.settings import Settings
from pytest_hostperf.stats import between_session_sd, ratio_of_medians, summarize
from pytest_hostperf.targets import budget_for
from pytest_hostperf.verdict import Judgement, Policy, host_slowdown, judge


class Judge:
    """Judges the items of one session against its baselines and its native measurements."""

    def __init__(self, settings: Settings, store: BaselineStore, comparisons: int,
                 default_budgets: Mapping[str, float]) -> None:
        self.settings = settings
        self.store = store
        self.comparisons = max(1, comparisons)
        self._default_budgets = default_budgets
        self._baselines: dict[str, BaselineFile | BaselineError | None] = {}

    # -- baselines --------------------------------------------------------------------------

    def baseline(self, state: EnvironmentState) -> BaselineFile | None:
        """The environment's baseline file for its fingerprint; raises :class:`BaselineError`."""
        if state.fingerprint_id is None:
            return None
        key = f"{state.backend.name}-{state.fingerprint_id}"
        if key not in self._baselines:
            try:
                self._baselines[key] = self.store.load(state.backend.name, state.fingerprint_id)
            except BaselineError as exc:
                self._baselines[key] = exc
        loaded = self._baselines[key]
        if isinstance(loaded, BaselineError):
            raise loaded
        return loaded

    def baseline_error(self, state: EnvironmentState) -> BaselineError | None:
        try:
            self.baseline(state)
        except BaselineError as exc:
            return exc
        return None

    def has_baseline(self, state: EnvironmentState) -> bool:
        try:
            return self.baseline(state) is not None
        except BaselineError:
            return False

    def uncovered(self, state: EnvironmentState) -> str:
        """Why the gate has no baseline for this environment's items, in one phrase."""
        if state.fingerprint_id is None:
            return "the environment was never identified"
        own = self.store.path_for(state.backend.name, state.fingerprint_id)
        if self.has_baseline(state):
            return f"tests not yet saved in {_short(own)} (save with --hostperf-save)"
        for other in self.store.files_for(state.backend.name):
            try:
                differ = [key for key, _, _ in mismatches(state.match, read_baseline(other).match)]
            except BaselineError:
                continue
            return f"fingerprint {state.fingerprint_id} differs from {_short(other)} in: {', '.join(differ)}"
        return (f"nothing saved for fingerprint {state.fingerprint_id} in {self.store.directory} "
                "(save with --hostperf-save)")

    # -- judging ----------------------------------------------------------------------------

    def policy(self, request: Request, state: EnvironmentState) -> Policy:
        tolerance = request.tolerance if request.tolerance is not None else self.settings.tolerance
        budget = budget_for(request.target, state.accelerator, request.max_overhead, self.settings.max_overhead,
                            self._default_budgets)
        return Policy(tolerance, self.settings.alpha, self.comparisons, self.settings.session_noise,
                      budget if request.target.kind != "native" else None)

    def judge(self, attempt: Attempt, state: EnvironmentState, native: Sequence[float] = (),
              to_native: RatioEstimate | None = None) -> Judgement | None:
        """The verdict of a measured attempt (None when nothing was measured).

        ``native``: native's samples of the same test in this session, for the ratio to
        native; a re-measurement passes the first attempt's ``to_native`` instead (only
        that one was interleaved). Raises :class:`BaselineError` for an unreadable baseline.
        """
        if attempt.outcome is not Outcome.PASSED or not attempt.samples:
            return None
        request = attempt.request
        policy = self.policy(request, state)
        summary = summarize(attempt.samples)
        if to_native is None and native and request.target.kind != "native":
            to_native = ratio_of_medians(attempt.samples, native, policy.confidence)
        baseline = self.baseline(state)
        history = baseline.history(request.test, request.target.mount or "-") if baseline else []
        note = _mount_mismatch(attempt, history)
        if note:
            return Judgement(Verdict.NO_BASELINE, note, to_native=to_native)
        saved_references = [r for r in (h.reference() for h in history) if r is not None]
        verdict = judge(summary, [h.summary() for h in history], policy, to_native,
                        baseline_name=f"{state.backend.name}-{state.fingerprint_id}",
                        host_slowdown=host_slowdown(attempt.references, saved_references),
                        # the host's spread over the saved sessions and this one: evidence of
                        # session noise that a short history cannot give about the test itself
                        host_noise=between_session_sd([*saved_references, *attempt.references[:1]]))
        if verdict.verdict is Verdict.NO_BASELINE:
            verdict = dataclasses.replace(verdict, reason=f"no baseline: {self.uncovered(state)}")
        return verdict

    def accepted(self, request: Request, judgement: Judgement | None) -> str | None:
        """The reason a failing verdict is accepted into the baseline (--hostperf-accept), if it is."""
        if judgement is None or not judgement.verdict.fails:
            return None
        return self.accepts(request)

    def accepts(self, request: Request) -> str | None:
        """The reason a failing verdict of this item would be accepted (--hostperf-accept), if any."""
        if not self.settings.save:
            return None
        if any(fnmatch.fnmatchcase(request.item_id, glob) or fnmatch.fnmatchcase(request.test, glob)
               for glob in self.settings.accept):
            return self.settings.accept_reason or "accepted with --hostperf-accept"
        return None

    def record(self, attempt: Attempt, state: EnvironmentState, attempts: Sequence[Attempt] = ()) -> Record:
        """The item's one record: what ran, what it measured, what the gate said.

        ``attempts``: every measurement of the item when it was re-measured (the chosen
        ``attempt`` among them). The reason is the rule's own line (verdict.judge) plus
        what this session adds to it: the re-measurements and an acceptance.
        """
        request = attempt.request
        judgement = attempt.judgement
        accepted = self.accepted(request, judgement)
        reason = judgement.reason if judgement else attempt.message
        if judgement is not None and len(attempts) > 1:
            medians = ", ".join(format_seconds(a.median_s) for a in attempts)
            reason += f" [re-measured {len(attempts) - 1}x after a pause: medians {medians}; judged on the fastest]"
        verdict = judgement.verdict if judgement else None
        against = attempt.against
        if against is not None and against.verdict and verdict is not Verdict.OVERHEAD:
            # --hostperf-against gates; the stored-baseline verdict is still shown (and saved)
            stored = f"stored baselines said {verdict.value}: {reason}" if verdict else "no stored-baseline verdict"
            reason = f"vs {against.rev[:12]} (gates, --hostperf-against): {against.reason} [{stored}]"
            verdict = Verdict(against.verdict)
        if accepted is not None:
            reason = f"{reason} [accepted into the baseline: {accepted}]"
        baseline = self.store.path_for(state.backend.name, state.fingerprint_id) if (
            state.fingerprint_id and self.has_baseline(state)) else None
        policy = self.policy(request, state)
        return Record(
            test=request.test, env=request.target.env, mount=request.target.mount, item=request.item_id,
            target=request.target.id, outcome=attempt.outcome or Outcome.ERROR,
            verdict=verdict, reason=reason, against=against,
            samples=tuple(attempt.samples), iterations=attempt.iterations,
            summary=summarize(attempt.samples) if attempt.samples and attempt.outcome is Outcome.PASSED else None,
            ratio_to_baseline=judgement.to_baseline if judgement else None,
            ratio_to_native=judgement.to_native if judgement else None,
            baseline_sessions=judgement.baseline_sessions if judgement else 0,
            between_session_sd=judgement.session_sd if judgement else None,
            host_slowdown=judgement.host_slowdown if judgement else None,
            baseline=str(baseline) if baseline else None, fingerprint_id=state.fingerprint_id,
            fingerprint=state.fingerprint, mount_info=attempt.mount_info, references=attempt.references,
            orchestration_s=tuple(v for a in (attempts or [attempt]) for v in a.orchestration_s),
            attempt_medians_s=tuple(summarize(a.samples).median_s for a in attempts if a.samples)
            if len(attempts) > 1 else (),
            accepted=accepted, reports=tuple(attempt.reports), tolerance=policy.tolerance,
            max_overhead=policy.max_overhead, blamed_on_host=bool(judgement and judgement.blamed_on_host),
        )


def _mount_mismatch(attempt: Attempt, history: Sequence[SavedSession]) -> str:
    """A baseline measured on another filesystem is not comparable: say so instead."""
    if not history or not attempt.mount_info:
        return ""
    info: Any = next(iter(attempt.mount_info.values()), {})
    now = info.get("fstype") if isinstance(info, Mapping) else None
    then = history[-1].context.get("fstype")
    if now and then and now != then:
        return (f"baseline was measured on a {then} mount, this run is on {now}; not comparable "
                "(save a new baseline with --hostperf-save if the change is intended)")
    # Same file system, other options that change timings (9p's cache mode, NFS's version
    # or transfer sizes, virtiofsd's cache): also another set-up.
    now_signature = mount_signature(info if isinstance(info, Mapping) else None)
    then_signature = history[-1].context.get("mount")
    if now_signature and then_signature and now_signature != then_signature:
        return (f"baseline was measured on a mount with other options ({then_signature}), this run has "
                f"{now_signature}; not comparable (save a new baseline with --hostperf-save if intended)")
    return ""


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"

