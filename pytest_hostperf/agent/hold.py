"""Holding an item: a test stopped inside ``benchmark(...)`` while the controller asks for halves.

A paired comparison (:mod:`pytest_hostperf.run.paired`) alternates short halves of two
agents. Run as whole pytest requests, each half carried pytest's runtest protocol,
fixture set-up and teardown, report serialisation and a round trip: ~10 ms natively
around ~2 ms of timed calls, and that harness (which varies with the machine's load)
made single pairs disagree by 50-130% on a loaded 2-core machine. A held item pays it
once: the agent runs the test up to pytest-benchmark's calibration, says ``holding``,
then answers each ``half`` request by calling pytest-benchmark's own runner (the
wrapped function, its timer, its GC setting) for the asked number of loops, until
``release``. The test then finishes normally (one round of one call, so
pytest-benchmark's statistics are not empty) and the ordinary ``result`` follows.

Both agents of a comparison are pinned to the same CPU while held (the controller names
it, one per session; an agent that may not use it takes its highest allowed one). Left to the scheduler,
each agent kept to a CPU of its own for a while, and on a VM-hosted 2-core machine one
CPU ran up to 20% slower than the other for stretches of ~100 ms (a busy hyperthread
sibling, steal time): consecutive batches of A/A pairs read 0.80x to 1.12x and the
intervals were 30-100% wide; pinned, 2-4% (benchmarks/results/paired-study.log).

The wire: a ``run`` request with ``"hold": true`` (and ``"cpu": N``) is answered
``{"event": "holding", "cpu": N or null}`` from inside ``benchmark(...)``; then
``{"op": "half", "iterations": n, "rounds": r}`` gets ``{"event": "half", "samples":
[seconds per call, ..]}`` (or ``{"event": "half-error", "message": ...}``), and
``{"op": "release"}`` lets the test finish: the ordinary ``result`` follows.

A test that never reaches the calibration (``benchmark.pedantic``, a failure before
the call, no benchmark fixture) answers ``result`` at once; the controller then uses
whole requests for its halves.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from pytest_hostperf.agent.channel import AgentChannel

#: The most rounds or calls one half may ask for (a bad request must not hang the agent
#: for hours; a 2 ms half of a 50 ns function is 40,000 calls).
MAX_HALF_ITERATIONS = 10_000_000
MAX_HALF_ROUNDS = 1_000

Runner = Callable[[range], float]


class HeldItem:
    """Serves halves from inside one test's ``benchmark(...)`` call."""

    def __init__(self, channel: AgentChannel, nodeid: str, cpu: Any = None) -> None:
        self.channel = channel
        self.nodeid = nodeid
        self.cpu = cpu if isinstance(cpu, int) and not isinstance(cpu, bool) and cpu >= 0 else None
        self.halves = 0
        #: The controller closed the channel or asked to shut down while the item was held.
        self.closing = False

    def calibrate(self, runner: Runner) -> tuple[float, int, range]:
        """Stands in for pytest-benchmark's ``_calibrate_timer``: serve, then one round of one call."""
        self.serve(runner)
        return 1.0, 1, range(1)

    def serve(self, runner: Runner) -> None:
        saved = _pin(self.cpu)
        try:
            self.channel.send({"event": "holding", "nodeid": self.nodeid,
                               "cpu": _single(os.sched_getaffinity(0)) if saved is not None else None})
            self._serve(runner)
        finally:
            if saved is not None:
                os.sched_setaffinity(0, saved)

    def _serve(self, runner: Runner) -> None:
        while True:
            request = self.channel.receive()
            op = request.get("op") if request else "shutdown"
            if op == "release":
                return
            if op == "shutdown":
                self.closing = True
                return
            if op == "ping":
                self.channel.send({"event": "pong"})
            elif op == "half":
                self.channel.send(self.half(runner, request or {}))
            else:
                self.channel.send({"event": "half-error", "message": f"while holding {self.nodeid}, "
                                                                     f"unknown request {request!r}"})

    def half(self, runner: Runner, request: dict[str, Any]) -> dict[str, Any]:
        iterations = _count(request.get("iterations"), MAX_HALF_ITERATIONS)
        rounds = _count(request.get("rounds", 1), MAX_HALF_ROUNDS)
        if iterations is None or rounds is None:
            return {"event": "half-error", "message": f"a half needs whole 'iterations' (1-{MAX_HALF_ITERATIONS}) "
                                                      f"and 'rounds' (1-{MAX_HALF_ROUNDS}), got {request!r}"}
        loops = range(iterations)
        samples = [runner(loops) / iterations for _ in range(rounds)]
        self.halves += 1
        return {"event": "half", "samples": samples}


def hold_fixture(item: Any, held: HeldItem) -> bool:
    """Make the item's benchmark fixture serve halves at its calibration; False without one."""
    fixture = (getattr(item, "funcargs", None) or {}).get("benchmark")
    if fixture is None or not callable(getattr(fixture, "_calibrate_timer", None)):
        return False
    fixture._calibrate_timer = held.calibrate
    fixture._max_time = 0.0
    fixture._min_rounds = 1
    fixture._warmup = False
    return True


def _pin(cpu: int | None) -> set[int] | None:
    """Pin this process to ``cpu`` (or its highest allowed CPU); the affinity to restore, None if unpinned."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu if cpu in allowed else max(allowed)})
    except (OSError, ValueError):   # a cpuset or seccomp profile that forbids it: unpinned
        return None
    return allowed


def _single(cpus: set[int]) -> int | None:
    return next(iter(cpus)) if len(cpus) == 1 else None


def _count(value: Any, most: int) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most
    return value if ok else None
