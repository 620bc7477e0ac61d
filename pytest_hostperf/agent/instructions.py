"""Instructions per call of a benchmarked function, counted by callgrind from inside.

The counting agent is an ordinary hostperf agent started under
``valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no`` (see
:mod:`pytest_hostperf.counting` for the command). Interpreter start-up, pytest,
collection and fixtures run without instrumentation (about 10x slower than native
instead of 70x); the counter switches instrumentation on only around its own blocks and
*collects* only between two client requests that bracket each call of the function.

One measurement (:meth:`InstructionCounter.measure`), all decided by counts, never by a
clock, so that two sessions do exactly the same thing:

1. one call uninstrumented (imports, caches, first-call work), GC collected, then one
   more uninstrumented call: the collection hands the allocator free chunks that the
   next call sorts into its bins, which cost a 20,000-key dict build 6.5% more in the
   first call after it than in every later one (measured); the second call absorbs it;
2. a counted no-op block, thrown away, then a probe: one call counted, which sizes the
   blocks: ``n = ceil(target / probe)``. The first counted call after uncounted ones
   reads 0.3-1.5% high in allocation-heavy code (a JSON round trip, string joins;
   measured, warm-up calls before it do not change that), unless a counted block of
   any kind ran in between: the no-op block, whose cost is a few thousand
   instructions, absorbs it;
3. for cheap functions (``n > 1``): warm-up calls uninstrumented (at least 8, so
   CPython's specializing interpreter has settled), then a thrown-away no-op block again;
4. blocks A and B of ``n`` counted calls, then a no-op block: the same loop and the
   same two toggles around each of ``n`` empty slots (see :meth:`_block`). When one
   call already fills a block (``n == 1``) the probe is block A and step 3 is skipped:
   a 10 ms function costs two counted calls and three uninstrumented;
5. ``per_call = (mean(A, B) - noop) / n``; the noise floor is ``|A - B|`` relative to it;
6. one last call, uninstrumented, whose result the test gets.

Every counted call drops its result at once, inside the counted region, as
pytest-benchmark's timing loop does: a result kept alive across the next call makes
that call allocate fresh memory instead of reusing the freed kind, and so count a
different path (a JSON round trip's block B read 2% under A when A's result was still
held, measured).

GC is collected once, uninstrumented, after step 1 and disabled until the last block
ends. The whole module is stdlib only: it runs inside every environment.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Final

from pytest_hostperf.agent.client_requests import (
    START_INSTRUMENTATION,
    STOP_INSTRUMENTATION,
    ZERO_STATS,
    MachineCode,
)

#: Set by the launcher to the directory given to ``--callgrind-out-file``; dumps are
#: written there as ``callgrind.out.N``.
DUMP_DIR_VARIABLE: Final = "HOSTPERF_CALLGRIND_DIR"
DUMP_FILE_NAME: Final = "callgrind.out"

#: What a count includes and how it is taken (see the module doc). Counts are compared
#: only within one method: it is part of the software fingerprint's match keys. 2: the
#: probe is never biased block A, results are freed inside the count (2026-12-08).
METHOD: Final = 2
#: Counted instructions per block. Callgrind runs ~70 M instructions/s on this machine,
#: so a block of a cheap function costs ~0.1-0.2 s; a call larger than this is counted
#: once per block.
DEFAULT_TARGET_INSTRUCTIONS: Final = 10_000_000
#: More calls than this per block buy no precision (counts are exact) and cost time.
MAX_CALLS_PER_BLOCK: Final = 1000
#: CPython 3.11+ specializes a code object after a few executions (RESUME/backward
#: jumps); 8 calls before counting leaves the cheap functions settled.
MIN_WARMUP_CALLS: Final = 8


class CountingUnavailable(Exception):
    """This process cannot count instructions; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Count:
    """The outcome of one measurement; ``to_json`` is what crosses the wire."""

    per_call: float          # instructions per call of the function, harness removed
    noise: float             # |A - B| / (mean(A, B) - noop): the noise floor of this count
    calls_per_block: int
    probe: int               # instructions of the single probe call (harness included)
    blocks: tuple[int, int]  # raw totals of blocks A and B
    noop: int                # raw total of the no-op block
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {"per_call": self.per_call, "noise": self.noise, "calls_per_block": self.calls_per_block,
                "probe": self.probe, "blocks": list(self.blocks), "noop": self.noop,
                "duration_s": round(self.duration_s, 3)}


def read_dump_total(path: Path) -> int:
    """The total cost (``summary:``, or ``totals:`` if absent) of one callgrind dump file.

    ``summary:`` sits in the header, so only the first lines are read; a dump of a large
    region holds thousands of per-function lines after it.
    """
    totals = None
    with open(path, encoding="utf-8", errors="replace") as dump:
        for line in dump:
            if line.startswith("summary:"):
                return int(line.split()[1])
            if line.startswith("totals:"):
                totals = int(line.split()[1])
    if totals is None:
        raise CountingUnavailable(f"callgrind dump {path} has neither a 'summary:' nor a 'totals:' line")
    return totals


class CallgrindDumps:
    """The dump files one callgrind process writes into its own directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def take_latest(self) -> int:
        """Total of the newest dump (highest ``.N``); every dump file is removed."""
        numbered = []
        for path in self.directory.glob(DUMP_FILE_NAME + ".*"):
            suffix = path.name[len(DUMP_FILE_NAME) + 1:]
            if suffix.isdigit():
                numbered.append((int(suffix), path))
        if not numbered:
            raise CountingUnavailable(
                f"callgrind wrote no dump into {self.directory}: was the agent started with "
                f"--callgrind-out-file={self.directory / DUMP_FILE_NAME} (pytest_hostperf.counting.counting_argv)?")
        numbered.sort()
        try:
            return read_dump_total(numbered[-1][1])
        finally:
            for _, path in numbered:
                path.unlink(missing_ok=True)


Prepare = Callable[[], "tuple[tuple[Any, ...], dict[str, Any]]"]


class InstructionCounter:
    """Counts instructions per call of a function inside a process run by callgrind."""

    def __init__(self, code: MachineCode, dumps: CallgrindDumps,
                 target_instructions: int = DEFAULT_TARGET_INSTRUCTIONS) -> None:
        self._code = code
        self._dumps = dumps
        self.target_instructions = target_instructions
        self._collecting = False

    @classmethod
    def open(cls, target_instructions: int = DEFAULT_TARGET_INSTRUCTIONS) -> InstructionCounter:
        """A counter for this process, or :class:`CountingUnavailable` saying why not."""
        try:
            code = MachineCode()
        except OSError as exc:
            raise CountingUnavailable(str(exc)) from exc
        if not code.running_on_valgrind():
            raise CountingUnavailable("this agent does not run under valgrind: start it with "
                                      "pytest_hostperf.counting.counting_argv()")
        directory = os.environ.get(DUMP_DIR_VARIABLE)
        if not directory or not os.access(directory, os.W_OK):
            raise CountingUnavailable(f"${DUMP_DIR_VARIABLE} must name a writable directory, the one given to "
                                      f"--callgrind-out-file (it is {directory!r})")
        counter = cls(code, CallgrindDumps(Path(directory)), target_instructions)
        counter._check_collection_starts_off()
        return counter

    @property
    def machine_code(self) -> MachineCode:
        return self._code

    def measure(self, target: Callable[..., Any], prepare: Prepare,
                teardown: Callable[..., Any] | None = None) -> tuple[Any, Count]:
        """Count ``target(*args, **kwargs)`` with arguments from ``prepare()``.

        ``prepare`` runs before every call, outside the counted region (pytest-benchmark's
        ``setup``), ``teardown(*args, **kwargs)`` after it. Returns the last call's result
        and the count. An exception from the target propagates after callgrind is back
        to its idle state.
        """
        started = time.perf_counter()
        self._call(target, prepare, teardown)  # 1. uninstrumented first call
        was_enabled = gc.isenabled()
        # Collected here, uninstrumented: a collection of the agent's heap (pytest and
        # all) at callgrind speed cost more than the blocks themselves (measured).
        gc.collect()
        gc.disable()
        try:
            self._call(target, prepare, teardown)  # settles the allocator after the collection
            count = self._measure_with_gc_off(target, prepare, teardown)
            result = self._call(target, prepare, teardown)  # 6. the result the test sees
        finally:
            if was_enabled:
                gc.enable()
        return result, dataclasses.replace(count, duration_s=time.perf_counter() - started)

    def _measure_with_gc_off(self, target: Callable[..., Any], prepare: Prepare,
                             teardown: Callable[..., Any] | None) -> Count:
        with self._instrumented():
            self._block(None, prepare, teardown, 1)  # 2. absorbs the first counted block's excess
            probe = self._block(target, prepare, teardown, 1)
            calls = max(1, min(MAX_CALLS_PER_BLOCK, math.ceil(self.target_instructions / max(probe, 1))))
            if calls == 1:
                # A call that fills a block on its own has settled inside it: the probe is A.
                return self._count(target, prepare, teardown, calls, probe, probe)
        for _ in range(max(calls, MIN_WARMUP_CALLS)):  # 3.
            self._call(target, prepare, teardown)
        with self._instrumented():
            self._block(None, prepare, teardown, 1)
            return self._count(target, prepare, teardown, calls, probe, self._block(target, prepare, teardown, calls))

    def _count(self, target: Callable[..., Any], prepare: Prepare, teardown: Callable[..., Any] | None,
               calls: int, probe: int, first: int) -> Count:
        """Steps 4-5 after block A (``first``): block B, the no-op block, the count."""
        second = self._block(target, prepare, teardown, calls)
        noop = self._block(None, prepare, teardown, calls)
        counted = (first + second) / 2 - noop
        if counted <= 0:
            raise CountingUnavailable(f"the function counted no more instructions than a no-op ({first}, {second} vs "
                                      f"{noop} in {calls} calls): callgrind is not counting the benchmarked code")
        return Count(per_call=counted / calls, noise=abs(first - second) / counted, calls_per_block=calls,
                     probe=probe, blocks=(first, second), noop=noop, duration_s=0.0)

    # -- the counted region -------------------------------------------------------------

    @staticmethod
    def _call(target: Callable[..., Any], prepare: Prepare, teardown: Callable[..., Any] | None) -> Any:
        args, kwargs = prepare()
        try:
            return target(*args, **kwargs)
        finally:
            if teardown is not None:
                teardown(*args, **kwargs)

    def _block(self, target: Callable[..., Any] | None, prepare: Prepare, teardown: Callable[..., Any] | None,
               calls: int) -> int:
        """``calls`` calls with collection on only inside each; returns the total count.

        ``target=None`` is the no-op arm: the same loop and toggles with nothing between
        them, so what it counts (the toggles' own return and call paths) cancels, and
        what remains is the call ``target(*args, **kwargs)`` itself. (A no-op *function*
        would cancel the cost of a Python call, and make a cheap C builtin such as
        ``time.sleep`` count less than nothing.)
        """
        toggle = self._code.toggle_collect
        # ZERO after START is needed: the first dump after instrumentation is switched on
        # again otherwise reports a garbage total (measured with callgrind 3.19).
        self._code.request(ZERO_STATS)
        try:
            for _ in range(calls):
                args, kwargs = prepare()
                self._collecting = True
                if target is None:
                    toggle()
                    toggle()
                else:
                    toggle()
                    target(*args, **kwargs)  # the result is freed here, counted (see the module doc)
                    toggle()
                self._collecting = False
                if teardown is not None:
                    teardown(*args, **kwargs)
        finally:
            if self._collecting:  # the target raised between the toggles
                toggle()
                self._collecting = False
        self._code.dump_stats_at(b"hostperf-block")
        return self._dumps.take_latest()

    def _instrumented(self) -> _Instrumented:
        return _Instrumented(self._code)

    def _check_collection_starts_off(self) -> None:
        # With --collect-atstart=yes the toggles would invert: everything *but* the calls
        # would be counted. An empty block shows it: it must count nothing.
        with self._instrumented():
            empty = self._block(None, _no_arguments, None, 0)
        if empty != 0:
            raise CountingUnavailable(f"callgrind collected {empty} instructions with no call in the block: start "
                                      "valgrind with --collect-atstart=no (pytest_hostperf.counting.counting_argv)")


def _no_arguments() -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (), {}


class _Instrumented:
    """Callgrind instrumentation on for a ``with`` block (off again even on error)."""

    def __init__(self, code: MachineCode) -> None:
        self._code = code

    def __enter__(self) -> None:
        self._code.request(START_INSTRUMENTATION)

    def __exit__(self, *exc_info: object) -> None:
        self._code.request(STOP_INSTRUMENTATION)
