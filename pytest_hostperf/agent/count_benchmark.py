"""The agent's ``count`` request: a pytest-benchmark test whose ``benchmark(...)`` counts.

The test runs through pytest's normal protocol (fixtures, parametrize, markers), only
its ``benchmark`` fixture is changed for that one call: pytest-benchmark's ``__call__``
and ``pedantic`` keep their own checks (used twice, bad ``iterations``) and reach the
fixture's ``_raw``/``_raw_pedantic``, which this module replaces on the instance by a
call of :meth:`InstructionCounter.measure`. The function's result is returned as usual,
so the test's own assertions still run.

Stdlib (and, at run time, pytest-benchmark's fixture object) only: runs in every environment.
"""

from __future__ import annotations

import atexit
import gc
import os
from typing import Any, Callable

from pytest_hostperf.agent.count_fingerprint import software_fingerprint
from pytest_hostperf.agent.instructions import (
    DEFAULT_TARGET_INSTRUCTIONS,
    DUMP_DIR_VARIABLE,
    Count,
    CountingUnavailable,
    InstructionCounter,
)
from pytest_hostperf.agent.isolation import Zygote

_PATCHED = ("_raw", "_raw_pedantic")


class BenchmarkCounting:
    """Counting state of one agent: idle until a ``count`` request arms it.

    The worker calls :meth:`start` once before announcing itself, answers a ``count``
    request with :meth:`answer`; in the child that runs it, :meth:`arm` sees the request,
    :meth:`attach` and :meth:`detach` wrap the test call.
    """

    def __init__(self, open_counter: Callable[[int], InstructionCounter] = InstructionCounter.open) -> None:
        self._open_counter = open_counter
        self._counter: InstructionCounter | None = None
        self._reason: str | None = None
        self._software: dict[str, Any] | None = None
        self._armed = False
        self._count: Count | None = None
        self._patched: Any = None
        self._zygote: Zygote | None = None

    def start(self, serve: Callable[[dict[str, Any]], dict[str, Any]], after: Callable[[], Any],
              in_zygote: Callable[[], Any] | None = None) -> None:
        """Become a counting agent if started as one (by ``counting_argv``), else do nothing.

        Called once, after collection and before the agent announces itself: opens the
        counter, then forks the zygote (see :mod:`.isolation`) that will run
        ``serve(request)`` and ``after()`` in a fresh child per ``count`` request, so
        every count starts from this very state. The software fingerprint is taken
        after the fork, in the agent: it reads /proc, whose changing numbers (CPU MHz,
        free memory) would otherwise move the zygote's heap from session to session.
        """
        if DUMP_DIR_VARIABLE not in os.environ:
            return
        try:
            self._counter = self._open_counter(DEFAULT_TARGET_INSTRUCTIONS)
        except CountingUnavailable as exc:
            self._reason = str(exc)
            return
        gc.collect()
        # Everything alive now (pytest, the collected items, the plugins) moves to the
        # permanent generation: the collection before each count then scans only what the
        # test made, not the agent's whole heap at valgrind's speed (~0.3 s a count).
        gc.freeze()
        self._zygote = Zygote(serve, after, in_zygote)
        # Reaped before the agent exits, so its exit (and callgrind's last dump into the
        # dump directory) is over when the controller removes that directory.
        atexit.register(self._zygote.close)
        self._software = software_fingerprint(self._counter.machine_code)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The result of a ``count`` request, counted in a fresh child of the zygote."""
        if self._zygote is None:
            reason = self._reason or ("this agent was not started as a counting agent: start it with "
                                      "pytest_hostperf.counting.counting_argv() and counting_environ()")
            return {"event": "result", "nodeid": request.get("nodeid"), "outcome": "skipped", "reports": [],
                    "samples": None, "iterations": None, "instructions": None, "instructions_reason": reason}
        answer = self._zygote.call(request)
        answer["software"] = self._software
        return answer

    def arm(self, request: dict[str, Any]) -> None:
        """Count the next test call if ``request`` is a ``count`` request."""
        self._armed = request.get("op") == "count" and self._counter is not None
        if self._armed and self._counter is not None and request.get("target_instructions"):
            self._counter.target_instructions = int(request["target_instructions"])
        self._count = None

    def attach(self, item: Any) -> None:
        """Make the item's ``benchmark`` fixture count (no-op unless armed)."""
        if not self._armed:
            return
        fixture = (getattr(item, "funcargs", None) or {}).get("benchmark")
        if fixture is None or not all(hasattr(fixture, name) for name in _PATCHED):
            return  # detach() reports why nothing was counted
        fixture._raw = self._raw
        fixture._raw_pedantic = self._raw_pedantic
        self._patched = fixture

    def detach(self, item: Any) -> dict[str, Any] | None:
        """The measurement fields of the result (None unless armed); disarms."""
        if not self._armed:
            return None
        self._armed = False
        if self._patched is not None:
            for name in _PATCHED:
                self._patched.__dict__.pop(name, None)
            self._patched = None
        measurement: dict[str, Any] = {"samples": None, "iterations": None,
                                       "instructions": self._count.to_json() if self._count else None}
        if self._count is None:
            measurement["instructions_reason"] = _why_nothing_counted(item)
        return measurement

    # -- the replacements of pytest-benchmark's BenchmarkFixture._raw / _raw_pedantic --------

    def _raw(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._counter is not None
        result, self._count = self._counter.measure(function, lambda: (args, kwargs))
        return result

    def _raw_pedantic(self, target: Callable[..., Any], args: tuple[Any, ...] = (),
                      kwargs: dict[str, Any] | None = None, setup: Callable[[], Any] | None = None,
                      teardown: Callable[..., Any] | None = None,
                      rounds: int = 1, warmup_rounds: int = 0, iterations: int = 1) -> Any:
        # rounds/warmup_rounds/iterations size a *timing*; a count sizes itself. The
        # argument rules are pytest-benchmark's, so a test that fails there fails here.
        for name, value, minimum in (("iterations", iterations, 1), ("rounds", rounds, 1),
                                     ("warmup_rounds", warmup_rounds, 0)):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"Must have positive int for `{name}`.")
        if iterations > 1 and setup:
            raise ValueError("Can't use more than 1 `iterations` with a `setup` function.")
        fixed_args, fixed_kwargs = tuple(args), dict(kwargs or {})

        def prepare() -> tuple[tuple[Any, ...], dict[str, Any]]:
            if setup is not None:
                produced = setup()
                if produced:
                    if fixed_args or fixed_kwargs:
                        raise TypeError("Can't use `args` or `kwargs` if `setup` returns the arguments.")
                    return tuple(produced[0]), dict(produced[1])
            return fixed_args, fixed_kwargs

        assert self._counter is not None
        result, self._count = self._counter.measure(target, prepare, teardown)
        return result


def _why_nothing_counted(item: Any) -> str:
    fixture = (getattr(item, "funcargs", None) or {}).get("benchmark")
    if fixture is None:
        return "the test has no benchmark fixture"
    if not all(hasattr(fixture, name) for name in _PATCHED):
        return (f"this pytest-benchmark ({type(fixture).__module__}) has no BenchmarkFixture._raw/_raw_pedantic "
                "to count through; counting supports pytest-benchmark 3.2 to 5.x")
    return "the test did not reach benchmark(...) (failed or skipped before it)"
