"""One session's run: the plan measured test by test, its records, what it saves and reports.

Made by the controller once collection is over, from the :class:`~.plan.Plan` and the
:class:`~.pool.EnvironmentPool` that has been starting agents since configure.
"""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping

from pytest_hostperf.baselines import BaselineStore, EnvironmentSave
from pytest_hostperf.model import EnvironmentReport, Record, Verdict
from pytest_hostperf.report.json import build_json
from pytest_hostperf.run.against import AgainstRevision
from pytest_hostperf.run.count import InstructionCounting
from pytest_hostperf.run.judge import Judge
from pytest_hostperf.run.plan import Plan, PlanRunner, Strategy
from pytest_hostperf.run.pool import EnvironmentPool
from pytest_hostperf.settings import Settings


class SessionRun:
    """Measures the plan's tests on request and keeps one record per item."""

    def __init__(self, plan: Plan, pool: EnvironmentPool, settings: Settings,
                 default_budgets: Mapping[str, float], strategy: Strategy | None = None,
                 against: AgainstRevision | None = None) -> None:
        self.plan = plan
        self.pool = pool
        self.settings = settings
        self.store = BaselineStore(settings.baselines_dir)
        self.judge = Judge(settings, self.store, plan.comparisons, default_budgets)
        self.runner = PlanRunner(plan, pool, self.judge, settings, strategy, against=against)
        self.counting = InstructionCounting(pool, settings, plan.agent_args, self.judge.accepts) \
            if settings.counts_instructions else None
        self.records: dict[str, Record] = {}

    def start(self) -> None:
        """Start the plan's environments and load the statistics in the background."""
        # scipy.special (~0.25 s) is needed by the first verdict; after collection the main
        # thread only waits for agents, so the import no longer competes with collection.
        def load_statistics() -> None:
            importlib.import_module("scipy.special")

        self.pool.in_background(load_statistics, "hostperf-import")
        for env, mounts in self.plan.mounts_by_env().items():
            self.pool.state(env).backend.use_mounts(mounts)
        self.pool.prestart(self.plan.envs, self.plan.agent_args)
        against = self.runner.against
        if against is not None and against.args.test_files:
            against.pool.prestart(self.plan.envs, against.args)

    def run_test(self, test: str) -> None:
        """Measure every target of ``test`` unless already done (one item triggers its whole group)."""
        if all(r.item_id in self.records for r in self.plan.group(test)):
            return
        records = self.runner.run_test(test)
        if self.counting is not None:
            # After the test's timings in every environment, before the next test's.
            records = self.counting.apply(self.plan.group(test), records)
        for record in records:
            self.records[record.item or record.test] = record

    def record(self, item_id: str) -> Record:
        return self.records[item_id]

    @property
    def complete(self) -> bool:
        """Whether every planned item was measured (not cut short by -x, Ctrl-C or SIGTERM)."""
        return all(r.item_id in self.records for r in self.plan.requests)

    # -- saving -------------------------------------------------------------------------------

    def savable(self) -> list[Record]:
        """The records a save keeps: measured, and neither failed nor failing unless accepted."""
        return [r for r in self.records.values() if r.summary is not None and not r.fails]

    def save_baselines(self) -> list[Path]:
        """Append this session to every environment's baseline, all files or none.

        Raises :class:`~pytest_hostperf.baselines.BaselineError` (an unreadable file) or
        :class:`~pytest_hostperf.baselines.BaselineSaveError` (a failed write).
        """
        saves = []
        keep = self.savable()
        for state in self.pool.states():
            records = [r for r in keep if r.env == state.name]
            if state.fingerprint_id is None or not records:
                continue
            saves.append(EnvironmentSave(state.backend.name, state.fingerprint_id, state.match, state.fingerprint,
                                         records))
        paths = self.store.save_all(saves, self.pool.context.session_id, self.settings.history) if saves else []
        if self.counting is not None:
            names = {state.name: state.backend.name for state in self.pool.states()}
            counts = self.counting.saves(keep, names)
            paths += self.counting.store.save_all(counts, self.pool.context.session_id)
        return paths

    # -- reporting ----------------------------------------------------------------------------

    def environment_reports(self) -> list[EnvironmentReport]:
        reports = []
        for state in self.pool.states():
            error = self.judge.baseline_error(state)
            uncovered = any(r.verdict is Verdict.NO_BASELINE for r in self.records.values() if r.env == state.name)
            reports.append(EnvironmentReport(
                state.name, state.fingerprint_id, state.startup_s, self._orchestration_ms(state.name),
                error=str(state.failure) if state.failure else None,
                baseline_error=str(error) if error else None,
                baseline=str(self.store.path_for(state.backend.name, state.fingerprint_id))
                if state.fingerprint_id else None,
                uncovered=self.judge.uncovered(state) if uncovered else None,
                code=self.pool.code.report(state.name)))
        return reports

    def _orchestration_ms(self, env: str) -> float | None:
        values = [v for r in self.records.values() if r.env == env for v in r.orchestration_s]
        return statistics.median(values) * 1000 if values else None

    def report(self) -> dict[str, Any]:
        """The JSON report dict every output renders."""
        data = build_json(self.ordered_records(), self.settings, self.environment_reports(),
                          session_id=self.pool.context.session_id, comparisons=self.plan.comparisons)
        if self.counting is not None:
            data["counting"] = self.counting.summary()
        return data

    def ordered_records(self) -> Iterable[Record]:
        """Records in collection order."""
        return [self.records[r.item_id] for r in self.plan.requests if r.item_id in self.records]
