"""Instruction counts beside the timings (``--hostperf-measure=time,instructions``).

Each environment that can count gets a **second** agent, started under callgrind
(:meth:`~pytest_hostperf.environments.base.Environment.start_counting_agent`) the first
time a test of it has been timed, and kept warm. Counting runs between tests, after the
test's timings in every environment and before the next test's: valgrind burns a core,
so nothing is ever timed while it counts (its start-up, ~8 CPU-s, included). Each count
is judged against the count saved for the same software fingerprint
(:mod:`pytest_hostperf.count_baselines`) by :func:`pytest_hostperf.counting.judge_instructions`,
and :func:`combine` folds it into the item's record: an instruction regression fails the
item even when its time passes, and the record says who moved (``attribution``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

from pytest_hostperf import counting
from pytest_hostperf.agent.protocol import ProtocolError
from pytest_hostperf.baselines import BaselineError
from pytest_hostperf.count_baselines import CountFile, CountSave, CountStore
from pytest_hostperf.environments.base import AgentClient, AgentDied, AgentTimeout, EnvironmentFailure
from pytest_hostperf.model import Attribution, Instructions, Outcome, Record, Verdict
from pytest_hostperf.run.plan import Request
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool, EnvironmentState
from pytest_hostperf.settings import Settings

#: The counting agent's start under valgrind took up to 32 s wall on this loaded machine.
COUNTING_START_TIMEOUT_S = 180.0
#: A count runs the call ~70x slower than native, twice, plus warm-ups.
COUNT_TIMEOUT_BASE_S = 120.0
COUNT_TIMEOUT_PER_TIMED_S = 300.0


@dataclasses.dataclass(frozen=True)
class Count:
    """What one count request gave: the count and the software it belongs to, or why not."""

    per_call: float | None
    noise: float = 0.0
    software_id: str | None = None
    software: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""          # why there is no count (per_call None)


class InstructionCounting:
    """The session's counting agents, its counts, their verdicts, and what they save."""

    def __init__(self, pool: EnvironmentPool, settings: Settings, agent_args: AgentArgs,
                 accepts: Callable[[Request], str | None] = lambda request: None) -> None:
        self.pool = pool
        self.settings = settings
        self.agent_args = agent_args
        self.store = CountStore(settings.baselines_dir)
        self._accepts = accepts
        self._clients: dict[str, AgentClient] = {}
        self._refused: dict[str, str] = {}
        self._files: dict[tuple[str, str], CountFile | BaselineError | None] = {}
        self.software: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.startup_s: dict[str, float] = {}

    def apply(self, requests: Sequence[Request], records: Sequence[Record]) -> list[Record]:
        """The records of one test's items with their counts folded in (same order)."""
        done = []
        for request, record in zip(requests, records):
            if record.outcome is not Outcome.PASSED or record.summary is None:
                done.append(record)
                continue
            state = self.pool.state(request.target.env)
            count = self.count(request, state, record.summary.median_s)
            done.append(self._judged(request, state, record, count))
        return done

    # -- counting ---------------------------------------------------------------------------

    def count(self, request: Request, state: EnvironmentState, timed_median_s: float) -> Count:
        """Count one item in its environment's counting agent (started on first use)."""
        client = self._client(state)
        if client is None:
            return Count(None, reason=self._refused[state.name])
        message = {"op": "count", "nodeid": request.test, "mount": request.target.mount or "",
                   "mount_path": state.mount_path(request.target.mount)}
        timeout = COUNT_TIMEOUT_BASE_S + COUNT_TIMEOUT_PER_TIMED_S * timed_median_s
        try:
            answer = client.request(message, "result", timeout, f"counting {request.test}")
        except AgentTimeout:
            self._drop(state.name)
            return Count(None, reason=f"the count did not finish within {timeout:.0f} s; the counting agent was "
                                      "stopped and will be restarted for the next test")
        except (AgentDied, EnvironmentFailure, ProtocolError) as exc:
            self._drop(state.name)
            return Count(None, reason=f"the counting agent failed ({' '.join(str(exc).split())[:300]}); it will be "
                                      "restarted for the next test")
        return parse_count_answer(answer)

    def _client(self, state: EnvironmentState) -> AgentClient | None:
        if state.name in self._refused:
            return None
        if state.name in self._clients:
            return self._clients[state.name]
        if state.accelerator == "tcg":
            refused = counting.refusal(state.name, machine="x86_64", slowdown=counting.TCG_SLOWDOWN)
            self._refused[state.name] = refused.reason if refused and refused.reason else "TCG"
            return None
        backend = state.backend
        started = time.monotonic()
        self.pool.reporter.step(f"{state.name}: starting the counting agent under valgrind")
        try:
            # The timing agent's launch exactly (import roots included): the same collection.
            launch = dataclasses.replace(backend.launch_for(self.settings.project_dir, self.agent_args.test_files,
                                                            self.agent_args.pytest_args),
                                         import_roots=self.agent_args.import_roots)
            transport = backend.start_counting_agent(launch)
        except EnvironmentFailure as exc:
            self._refused[state.name] = " ".join(str(exc).split())
            return None
        client = AgentClient(state.name, transport)
        try:
            client.wait_ready(COUNTING_START_TIMEOUT_S)
        except (AgentTimeout, AgentDied, EnvironmentFailure, ProtocolError) as exc:
            tail = " | ".join(transport.log_tail().strip().splitlines()[-3:])
            transport.close()
            self._refused[state.name] = f"the counting agent did not start ({exc}): {tail or 'no output'}"
            return None
        self.startup_s[state.name] = time.monotonic() - started
        self.pool.reporter.step(f"{state.name}: counting agent ready in {self.startup_s[state.name]:.1f} s")
        self._clients[state.name] = client
        return client

    def _drop(self, env: str) -> None:
        client = self._clients.pop(env, None)
        if client is not None:
            client.transport.close()

    def summary(self) -> dict[str, Any]:
        """Per environment: the counting agent's start-up, or why it does not count."""
        envs = dict.fromkeys([*self.startup_s, *self._refused])
        return {env: {"startup_s": self.startup_s.get(env), "refused": self._refused.get(env)} for env in envs}

    # -- judging ----------------------------------------------------------------------------

    def _judged(self, request: Request, state: EnvironmentState, record: Record, count: Count) -> Record:
        if count.per_call is None or count.software_id is None:
            return combine(record, None, None, count.reason or "nothing was counted")
        self.software[(state.backend.name, count.software_id)] = count.software
        try:
            saved_file = self._file(state.backend.name, count.software_id)
        except BaselineError as exc:
            return combine(record, Instructions(count.per_call, None, count.noise, None,
                                                f"count baseline unusable: {exc}", count.software_id), None, "")
        saved = saved_file.latest(request.test, request.target.mount or "-") if saved_file else None
        if saved is None:
            where = self.store.path_for(state.backend.name, count.software_id)
            why = ("no count saved for this test" if saved_file else
                   f"no counts saved for software {count.software_id} ({where.parent.name}/{where.name})")
            return combine(record, Instructions(count.per_call, None, count.noise, Verdict.NO_BASELINE.value,
                                                f"{why}; save with --hostperf-save", count.software_id), None, "")
        judgement = counting.judge_instructions(count.per_call, saved.per_call, noise=count.noise,
                                                baseline_noise=saved.noise,
                                                tolerance=self.settings.instructions_tolerance)
        instructions = Instructions(count.per_call, judgement.ratio, judgement.noise, judgement.verdict,
                                    judgement.reason, count.software_id, saved.per_call)
        combined = combine(record, instructions, judgement, "")
        if combined.verdict is Verdict.REGRESSION and record.verdict is not Verdict.REGRESSION:
            accepted = self._accepts(request)
            if accepted:
                combined = dataclasses.replace(combined, accepted=accepted, reason=(
                    f"{combined.reason} [accepted into the baseline: {accepted}]"))
        return combined

    def _file(self, environment: str, software_id: str) -> CountFile | None:
        key = (environment, software_id)
        if key not in self._files:
            try:
                self._files[key] = self.store.load(environment, software_id)
            except BaselineError as exc:
                self._files[key] = exc
        loaded = self._files[key]
        if isinstance(loaded, BaselineError):
            raise loaded
        return loaded

    # -- saving -----------------------------------------------------------------------------

    def saves(self, records: Sequence[Record], backend_names: Mapping[str, str]) -> list[CountSave]:
        """What ``--hostperf-save`` appends: the counts of the savable records, per software."""
        grouped: dict[tuple[str, str], list[tuple[str, str, float, float]]] = {}
        for record in records:
            counted = record.instructions
            if counted is None or counted.software_id is None:
                continue
            environment = backend_names.get(record.env, record.env)
            grouped.setdefault((environment, counted.software_id), []).append(
                (record.test, record.mount_key, counted.per_call, counted.noise or 0.0))
        return [CountSave(environment, software_id, self.software.get((environment, software_id), {}), entries)
                for (environment, software_id), entries in grouped.items()]


def parse_count_answer(answer: Mapping[str, Any]) -> Count:
    """A ``count`` result checked like any agent answer: a bad field is a reason, not a crash."""
    outcome = answer.get("outcome")
    counted = answer.get("instructions")
    raw_software = answer.get("software")
    software: Mapping[str, Any] = raw_software if isinstance(raw_software, Mapping) else {}
    if outcome != Outcome.PASSED.value and not counted:
        return Count(None, reason=f"the test {outcome} when run for counting: "
                                  f"{answer.get('instructions_reason') or answer.get('message') or 'no reason given'}")
    if not isinstance(counted, Mapping):
        return Count(None, reason=str(answer.get("instructions_reason") or "the agent counted nothing"))
    per_call, noise = counted.get("per_call"), counted.get("noise", 0.0)
    if (isinstance(per_call, bool) or not isinstance(per_call, (int, float)) or not math.isfinite(per_call)
            or per_call <= 0):
        return Count(None, reason=f"malformed count from the agent: per_call is {per_call!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
        return Count(None, reason=f"malformed count from the agent: noise is {noise!r}")
    software_id = software.get("id") if software else None
    if not isinstance(software_id, str) or not software_id:
        return Count(None, reason="the agent's count came without its software fingerprint id")
    return Count(float(per_call), float(noise), software_id, dict(software))


def combine(record: Record, instructions: Instructions | None, judgement: counting.InstructionJudgement | None,
            not_counted: str) -> Record:
    """The record with its count: the verdict, the reason and who moved (attribution).

    The time verdict stands, except that an instruction ``regression`` fails an item whose
    time did not fail (a 3% slowdown the time gate cannot prove). Attribution is said only
    when a count was judged: ``code``, ``platform``, ``both`` or ``none``.
    """
    if instructions is None:
        return dataclasses.replace(record, reason=f"{record.reason}; instructions not counted: {not_counted}")
    attribution = None
    if judgement is not None and record.verdict is not None:
        ratio = record.ratio_to_baseline
        attribution = Attribution(counting.attribute(
            judgement, record.verdict.value, (ratio.ci_low, ratio.ci_high) if ratio else None,
            record.tolerance if record.tolerance is not None else 0.05))
    count_text = f"{instructions.reason} ({instructions.per_call:,.0f} per call"
    count_text += (f" vs {instructions.baseline_per_call:,.0f} saved)" if instructions.baseline_per_call
                   else ")")
    verdict, reason = record.verdict, f"{record.reason}; {count_text}"
    time_fails = record.verdict is not None and record.verdict.fails
    if judgement is not None and judgement.verdict == Verdict.REGRESSION.value and not time_fails:
        verdict = Verdict.REGRESSION
        reason = (f"{count_text}: the code does more work (counts repeat exactly; time alone: "
                  f"{record.verdict.value if record.verdict else 'not judged'}: {record.reason})")
    if attribution is not None:
        reason += f" [attribution: {attribution.value}"
        reason += "; a count sees CPU work only, not waiting]" if attribution is Attribution.PLATFORM else "]"
    return dataclasses.replace(record, verdict=verdict, reason=reason, instructions=instructions,
                               attribution=attribution)
