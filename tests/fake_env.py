"""An in-process fake backend and agent for unit tests of the run loop (no subprocess).

The fake agent answers protocol requests from a script: per test node id, a list of
answers used in turn (the last one repeats). An answer is a dict merged into a normal
``result`` event, or one of the markers :data:`DIE` (the agent's channel closes),
:data:`HANG` (no answer: the request times out) and :data:`GARBLE` (an undecodable line).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments.base import (
    AgentDied,
    AgentLaunch,
    AgentTimeout,
    Environment,
    EnvironmentContext,
    Mount,
    Transport,
)
from pytest_hostperf.progress import Reporter
from pytest_hostperf.run.plan import Plan, Request
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool
from pytest_hostperf.settings import Settings
from pytest_hostperf.targets import Target

DIE, HANG, GARBLE = "die", "hang", "garble"


def settings(tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(project_dir=tmp_path, envs=("native", "docker"), baselines_dir=tmp_path / "baselines",
                    save=False, tolerance=0.05, alpha=0.01, require=(), max_overhead={}, timeout_s=5.0,
                    history=10, session_noise=0.25, blocks=3, confirm=2)
    return dataclasses.replace(base, **changes)


def samples(median: float, n: int = 40, spread: float = 0.01) -> list[float]:
    """Deterministic rounds around ``median`` (a symmetric ramp of +-spread)."""
    return [median * (1 + spread * (2 * i / (n - 1) - 1)) for i in range(n)]


class FakeAgent(Transport):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.lines: deque[bytes] = deque([protocol.encode(
            {"event": "ready", "protocol": protocol.PROTOCOL_VERSION, "fingerprint": backend.fingerprint,
             "modules": backend.modules})])
        self.dead = False
        self.closed = False
        self.held: dict[str, Any] | None = None   # the "run" message of the item held now

    def send(self, data: bytes) -> None:
        if self.dead or self.closed:
            raise AgentDied("agent input closed")
        message = protocol.decode(data)
        assert message is not None
        op = message["op"]
        if op == "shutdown":
            self.lines.append(protocol.encode({"event": "bye"}))
            return
        if op == "reference":
            self.backend.log.append(("reference", self.backend.name, message))
            self.lines.append(protocol.encode({"event": "reference", "samples": self.backend.reference()}))
            return
        if op in ("half", "release"):
            self._serve_held(op, message)
            return
        if message.get("hold") and self.backend.holds:
            # Held like agent/hold.py: halves come from the script's answer for the item,
            # logged as "run"s with their fixed work (the same sequence whole requests make).
            self.held = message
            self.backend.log.append(("hold", self.backend.name, message))
            self.lines.append(protocol.encode({"event": "holding", "nodeid": message["nodeid"]}))
            return
        self.backend.log.append(("run", self.backend.name, message))
        answer = self.backend.answer(message["nodeid"])
        if callable(answer):
            answer = answer(message)
        if answer == DIE:
            self.dead = True
        elif answer == GARBLE:
            self.lines.append(protocol.PREFIX + b"{not json\n")
        elif answer != HANG:
            event = {"event": "result", "nodeid": message["nodeid"], "outcome": "passed", "reports": [],
                     "iterations": 1, "duration_s": 0.0}
            event.update(answer)
            self.lines.append(protocol.encode(event))

    def _serve_held(self, op: str, message: dict[str, Any]) -> None:
        assert self.held is not None, f"{op} without a held item"
        nodeid = self.held["nodeid"]
        if op == "release":
            self.backend.log.append(("release", self.backend.name, message))
            self.held = None
            self.lines.append(protocol.encode({"event": "result", "nodeid": nodeid, "outcome": "passed",
                                               "reports": [], "iterations": 1, "duration_s": 0.0,
                                               "samples": [1e-3]}))
            return
        fixed = {"iterations": message["iterations"], "rounds": message["rounds"]}
        half = {**self.held, "fixed": fixed}
        self.backend.log.append(("run", self.backend.name, half))
        answer = self.backend.answer(nodeid)
        answer = answer(half) if callable(answer) else answer
        if answer == DIE:
            self.dead = True
        elif answer.get("outcome", "passed") != "passed":
            self.held = None
            self.lines.append(protocol.encode({"event": "result", "nodeid": nodeid, "reports": [],
                                               "iterations": 1, "duration_s": 0.0, **answer}))
        else:
            self.lines.append(protocol.encode({"event": "half", "samples": answer["samples"]}))

    def read_line(self, deadline: float) -> bytes:
        if self.lines:
            return self.lines.popleft()
        if self.dead:
            raise AgentDied("agent exited with code 3")
        raise AgentTimeout("no answer")

    def close(self) -> None:
        self.closed = True


class FakeBackend(Environment):
    """A backend whose agents live in this process; counts starts and logs every request."""

    def __init__(self, name: str, script: dict[str, list[Any]], log: list[tuple[str, str, dict[str, Any]]],
                 reference: Callable[[], list[float]] | None = None) -> None:
        self.name = name
        self.script = {test: list(answers) for test, answers in script.items()}
        self.log = log
        self.reference = reference or (lambda: samples(1e-3, 15))
        self.fingerprint = {"cpu_model": "Fake CPU", "cpu_count": 2, "env_kind": name, "arch": "x86_64"}
        self.modules: dict[str, Any] = {}  # the module report of the agent's ready message
        self.launches: list[AgentLaunch] = []
        self.starts = 0
        self.stopped = 0
        self.agents: list[FakeAgent] = []
        self.holds = True   # False: like a test using benchmark.pedantic, never held

    def answer(self, test: str) -> Any:
        answers = self.script[test]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def check(self) -> None:
        return None

    def mounts(self) -> Sequence[Mount]:
        return (Mount("host", "/fake/" + self.name),)

    def start_agent(self, launch: AgentLaunch) -> Transport:
        self.starts += 1
        self.launches.append(launch)
        agent = FakeAgent(self)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        self.stopped += 1


@dataclasses.dataclass
class World:
    """A pool of fake backends and the log of everything the agents were asked."""

    settings: Settings
    pool: EnvironmentPool
    backends: dict[str, FakeBackend]
    log: list[tuple[str, str, dict[str, Any]]]

    def runs(self) -> list[tuple[str, str]]:
        return [(env, m["nodeid"]) for kind, env, m in self.log if kind == "run"]


def world(tmp_path: Path, scripts: dict[str, dict[str, list[Any]]], **changes: Any) -> World:
    log: list[tuple[str, str, dict[str, Any]]] = []
    backends = {env: FakeBackend(env, script, log) for env, script in scripts.items()}
    config = settings(tmp_path, envs=tuple(scripts), **changes)
    context = EnvironmentContext(config, "fakesession1", tmp_path / "work", Reporter())

    def factory(name: str, context: EnvironmentContext) -> Environment:
        return backends[name]

    return World(config, EnvironmentPool(context, factory), backends, log)


def plan(tests: Sequence[str], envs: Sequence[str], options: dict[str, Any] | None = None) -> Plan:
    requests = tuple(Request(f"{test}[{env}]", test, Target(env, None)) for test in tests for env in envs)
    return Plan(requests, AgentArgs(tuple(sorted({t.split("::")[0] for t in tests}))), options or {})
