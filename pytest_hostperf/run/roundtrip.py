"""Round trips to one pool's agents: a whole ``run`` request, or a held item's halves.

:class:`RoundTrips` is what a strategy calls to run a request once (the interleaved
blocks, a pair's calibration, a confirmation) and, for paired halves, to hold the item
inside its agent (:mod:`pytest_hostperf.agent.hold`) and ask for halves without
pytest's per-request harness. Every failure of the wire (a timeout, a crash, a garbled
answer) fails the one attempt, restarts the agent for the next test and never the
session; what the agent reports is validated (:mod:`pytest_hostperf.run.answers`) before
it lands in the attempt.
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import TYPE_CHECKING, Any, Mapping

from pytest_hostperf.agent.protocol import ProtocolError
from pytest_hostperf.environments.base import AgentClient, AgentDied, AgentTimeout, EnvironmentFailure
from pytest_hostperf.environments.process import tail_lines
from pytest_hostperf.model import Outcome
from pytest_hostperf.run.answers import MalformedAnswer, parse_run_answer, timings
from pytest_hostperf.run.codecheck import CodeCheck
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool, EnvironmentState
from pytest_hostperf.settings import Settings

if TYPE_CHECKING:
    from pytest_hostperf.run.plan import Attempt, Request


@dataclasses.dataclass
class RoundTrips:
    """Runs requests with the agents of ``pool`` (the session's, or REV's for --hostperf-against)."""

    pool: EnvironmentPool
    args: AgentArgs
    settings: Settings
    #: Where the modules each run imported are checked (the session's pool's check).
    code: CodeCheck
    #: Environments whose agent holds an item now: an agent can hold one at a time.
    holding: set[str] = dataclasses.field(default_factory=set)
    #: The CPU held items are pinned to (agent/hold.py): both sides of a pair on the same one.
    cpu: int = dataclasses.field(default_factory=lambda: pair_cpu(""))

    def __call__(self, request: Request, attempt: Attempt, options: Mapping[str, Any],
                 fixed: Mapping[str, int] | None = None) -> None:
        """Run the test once in its environment and add what came back to ``attempt``."""
        ready = self._ready(request, attempt)
        if ready is None:
            return
        client, state = ready
        message = self._message(request, state, options, fixed)
        started = time.perf_counter()
        answer = self._ask(client, request, attempt, message, "result")
        if answer is not None:
            self._absorb(answer, state, request, attempt, time.perf_counter() - started)

    def hold(self, request: Request, attempt: Attempt, options: Mapping[str, Any],
             fixed: Mapping[str, int]) -> Held | None:
        """Hold the item in its agent for halves; None when it answered at once.

        A test that is not held (``benchmark.pedantic``, a failure before the benchmark
        call) ran one ``fixed`` half instead: its failure is in ``attempt``, its timings
        are dropped (a warm-up, like the calibration's), and whole requests serve.
        """
        env = request.target.env
        if env in self.holding:
            return None
        ready = self._ready(request, attempt)
        if ready is None:
            return None
        client, state = ready
        message = {**self._message(request, state, options, fixed), "hold": True, "cpu": self.cpu}
        started = time.perf_counter()
        answer = self._ask(client, request, attempt, message, ("holding", "result"))
        if answer is None:
            return None
        if answer.get("event") == "result":
            before = len(attempt.samples)
            self._absorb(answer, state, request, attempt, time.perf_counter() - started)
            del attempt.samples[before:]
            return None
        self.holding.add(env)
        cpu = answer.get("cpu")
        return Held(self, client, state, request, attempt, cpu=cpu if isinstance(cpu, int) else None)

    # -- the steps of a round trip ------------------------------------------------------------

    def _ready(self, request: Request, attempt: Attempt) -> tuple[AgentClient, EnvironmentState] | None:
        """The environment's agent, when the item can run there; else the attempt says why not."""
        env = request.target.env
        try:
            client = self.pool.agent(env, self.args)
        except EnvironmentFailure as exc:
            attempt.fail(Outcome.ERROR if self._required(env) else Outcome.SKIPPED, str(exc))
            return None
        state = self.pool.state(env)
        mismatch = self.pool.code.reason(env)  # known at ready: numbers of other code are not worth taking
        if mismatch:
            attempt.fail(Outcome.FAILED, mismatch)
            return None
        problem = state.backend.mount_problem(request.target.mount) if request.target.mount else None
        if problem:
            attempt.fail(Outcome.ERROR if self._required(env) else Outcome.SKIPPED,
                         f"environment {env!r}: mount {request.target.mount!r} is not available here: {problem}")
            return None
        return client, state

    @staticmethod
    def _message(request: Request, state: EnvironmentState, options: Mapping[str, Any],
                 fixed: Mapping[str, int] | None) -> dict[str, Any]:
        message = {"op": "run", "nodeid": request.test, "mount": request.target.mount or "",
                   "mount_path": state.mount_path(request.target.mount), "benchmark_options": dict(options)}
        if fixed is not None:
            message["fixed"] = dict(fixed)
        return message

    def _ask(self, client: AgentClient, request: Request, attempt: Attempt, message: dict[str, Any],
             expect: str | tuple[str, ...]) -> dict[str, Any] | None:
        """Send ``message``, return the answer; on a broken wire fail the attempt and restart the agent."""
        env = request.target.env
        try:
            return client.request(message, expect, self.settings.timeout_s, f"running {request.test}")
        except AgentTimeout:
            self._restart(env)
            attempt.fail(Outcome.FAILED, f"environment {env!r}: {request.test} did not finish within "
                                         f"{self.settings.timeout_s:.0f} s (--hostperf-timeout); the agent was "
                                         "stopped and will be restarted for the next test")
        except (AgentDied, EnvironmentFailure) as exc:
            tail = client.transport.log_tail()
            self._restart(env)
            attempt.fail(Outcome.FAILED, f"environment {env!r}: the agent crashed while running {request.test} "
                                         f"({exc})" + _indented_tail(tail, str(exc)))
        except ProtocolError as exc:
            self._malformed(request, attempt, exc)
        return None

    def _malformed(self, request: Request, attempt: Attempt, exc: Exception) -> None:
        # The channel may be out of step after a garbled answer: start afresh.
        env = request.target.env
        self._restart(env)
        attempt.fail(Outcome.FAILED, f"environment {env!r}: malformed answer from the agent while running "
                                     f"{request.test}: {exc}; the agent will be restarted for the next test")

    def _restart(self, env: str) -> None:
        self.holding.discard(env)
        self.pool.restart(env)

    def _absorb(self, raw: Mapping[str, Any], state: EnvironmentState, request: Request, attempt: Attempt,
                wall_s: float) -> None:
        """A ``result`` answer into the attempt: outcome, reports, mount facts, samples."""
        env = request.target.env
        try:
            answer = parse_run_answer(raw)
        except MalformedAnswer as exc:
            self._malformed(request, attempt, exc)
            return
        attempt.orchestration_s.append(max(0.0, wall_s - answer.duration_s))
        self.code.ran(env, answer.modules)
        mismatch = self.code.reason(env)
        if mismatch:  # the cause, also when the body failed there (its reports would hide it)
            attempt.fail(Outcome.FAILED, mismatch + (f"\n{answer.message}" if answer.message else ""))
            return
        attempt.reports = list(answer.reports)
        if answer.mount_info:
            outside = dict(state.backend.mount_facts(request.target.mount)) if request.target.mount else {}
            attempt.mount_info = {name: {**info, "outside": outside} if outside and isinstance(info, dict) else info
                                  for name, info in answer.mount_info.items()}
        if answer.outcome is not Outcome.PASSED:
            attempt.fail(answer.outcome, answer.message)
            return
        attempt.outcome = Outcome.PASSED
        if answer.samples:
            attempt.samples.extend(answer.samples)
            attempt.iterations = answer.iterations
        else:
            attempt.message = "the test ran but did not call the benchmark fixture; nothing was measured"

    def _required(self, env: str) -> bool:
        """Whether --hostperf-require names this environment's kind (then a missing one is an error)."""
        return env.split(":")[0] in {e.split(":")[0] for e in self.settings.require}


@dataclasses.dataclass
class Held:
    """An item held inside its agent: halves on request, then :meth:`release` for its result."""

    trips: RoundTrips
    client: AgentClient
    state: EnvironmentState
    request: Request
    attempt: Attempt
    cpu: int | None = None    # the CPU the agent pinned itself to; None: not pinned
    open: bool = True

    def half(self, iterations: int, rounds: int = 1) -> list[float] | None:
        """``rounds`` timings of ``iterations`` calls (per call), added to the attempt; None when it failed."""
        if not self.open:
            return None
        started = time.perf_counter()
        answer = self.trips._ask(self.client, self.request, self.attempt,
                                 {"op": "half", "iterations": iterations, "rounds": rounds},
                                 ("half", "half-error", "result"))
        if answer is None:
            self._closed()
            return None
        if answer.get("event") == "result":  # the benchmarked function raised: the test ended
            self._closed()
            self.trips._absorb(answer, self.state, self.request, self.attempt, time.perf_counter() - started)
            return None
        if answer.get("event") == "half-error":
            self.release()
            self.attempt.fail(Outcome.ERROR, f"environment {self.request.target.env!r}: {answer.get('message')}")
            return None
        try:
            samples = list(timings(answer.get("samples"), "half samples"))
        except MalformedAnswer as exc:
            self._closed()
            self.trips._malformed(self.request, self.attempt, exc)
            return None
        self.attempt.samples.extend(samples)
        self.attempt.iterations = iterations
        return samples

    def release(self) -> None:
        """Let the test finish; its reports (and a failure in its teardown) land in the attempt."""
        if not self.open:
            return
        self._closed()
        started = time.perf_counter()
        answer = self.trips._ask(self.client, self.request, self.attempt, {"op": "release"}, "result")
        if answer is None:
            return
        held_samples, iterations = list(self.attempt.samples), self.attempt.iterations
        self.trips._absorb(answer, self.state, self.request, self.attempt, time.perf_counter() - started)
        # The halves are the samples: not the one call the test finishes with.
        self.attempt.samples[:], self.attempt.iterations = held_samples, iterations

    def _closed(self) -> None:
        self.open = False
        self.trips.holding.discard(self.request.target.env)


def pair_cpu(session_id: str) -> int:
    """The CPU for a session's held items: one of the controller's, chosen by the session id.

    The same for every pool of the session (both sides of a pair must share it), and
    different for sessions that run side by side on one machine (parallel CI jobs) as far
    as the CPUs go: a fixed choice would put them all on one CPU.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return allowed[zlib.crc32(session_id.encode()) % len(allowed)]


def _indented_tail(tail: str, message: str = "") -> str:
    if not tail or "last output:" in message:   # the backend's message already carries it
        return ""
    return "\n  last output:\n" + "\n".join("    " + line for line in tail_lines(tail, 15).splitlines())
