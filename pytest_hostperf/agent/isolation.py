"""Every count from the same process state: a frozen copy of the agent that forks per request.

Counts depend on the heap: where a buffer lands decides whether ``realloc`` grows it in
place or copies it, and which pymalloc pool serves an object; between otherwise equal
calls of a JSON round trip that moved the count by up to 4.6%
(benchmarks/results/instructions-methods.log). A count must therefore not depend on
which tests ran before it, nor on the results the agent has sent since.

So the counting agent forks a *zygote* once, right after collection, before it has
answered anything. The zygote only waits: for each request it forks a child that reads
the request, runs it (fixtures, the counted calls, teardown) and writes the answer,
while the zygote does the same few fixed steps every time, so its own heap returns to
the same state. Each child starts from an identical copy; the agent itself never runs
a counted test.

Frames on the pipes are a 1-byte kind, an 8-byte length and JSON. POSIX only, like
valgrind. Stdlib only: runs inside every environment.
"""

from __future__ import annotations

import json
import os
import struct
import traceback
from typing import Any, Callable, Final

_HEADER: Final = struct.Struct("<cQ")
_ANSWER: Final = b"A"    # the child's answer
_STATUS: Final = b"S"    # the zygote: the child is gone, with this wait status

_WARM_UP: Final = "zygote-warm-up"

Serve = Callable[[dict[str, Any]], dict[str, Any]]


class Zygote:
    """A forked, idle copy of the calling process that runs each request in a fresh fork."""

    def __init__(self, serve: Serve, after: Callable[[], Any], setup: Callable[[], Any] | None = None) -> None:
        """Fork now; ``serve(request)`` and then ``after()`` will run in one child per request.

        ``setup()`` runs once in the zygote, after the fork: state every child should
        start from but the calling process must not take on.
        """
        request_r, self._request_w = os.pipe()
        self._answer_r, answer_w = os.pipe()
        go_r, self._go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the zygote, whose coverage is not collected
            for fd in (self._request_w, self._answer_r, self._go_w):
                os.close(fd)
            _zygote_loop(go_r, request_r, answer_w, serve, after, setup)
        for fd in (request_r, answer_w, go_r):
            os.close(fd)
        # One empty round trip: the zygote's first cycle leaves its heap a little
        # different from the next ones (measured: 0.02-0.1% on the first count); after
        # it, every cycle starts from the same state.
        self.call({"op": _WARM_UP})

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run ``request`` in a new child of the zygote; its answer, or an ``error`` result."""
        nodeid = str(request.get("nodeid"))
        try:
            _write_frame(self._request_w, _ANSWER, json.dumps(request).encode())
            os.write(self._go_w, b"x")
            answer = None
            while True:
                kind, payload = _read_frame(self._answer_r)
                if kind == _ANSWER:
                    answer = json.loads(payload)
                elif kind == _STATUS:
                    break
        except (OSError, EOFError) as exc:
            return _error(nodeid, f"the counting zygote (pid {self.pid}) is gone ({exc}); restart the counting agent")
        if answer is None:
            return _error(nodeid, f"the counting child died without an answer (wait status {int(payload)}); "
                                  "see the agent log")
        return dict(answer)

    def close(self) -> None:
        """Let the zygote exit (it sees end-of-file) and reap it."""
        for fd in (self._go_w, self._request_w, self._answer_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _zygote_loop(go_r: int, request_r: int, answer_w: int, serve: Serve, after: Callable[[], Any],
                 setup: Callable[[], Any] | None) -> None:  # pragma: no cover - runs in the zygote
    try:
        if setup is not None:
            setup()
        while os.read(go_r, 1):
            child = os.fork()
            if child == 0:
                _child(request_r, answer_w, serve, after)
            _, status = os.waitpid(child, 0)
            _write_frame(answer_w, _STATUS, str(status).encode())
    finally:
        os._exit(0)


def _child(request_r: int, answer_w: int, serve: Serve, after: Callable[[], Any]) -> None:  # pragma: no cover
    try:
        request: dict[str, Any] = {}
        try:
            request = json.loads(_read_frame(request_r)[1])
            if request.get("op") == _WARM_UP:
                _write_frame(answer_w, _ANSWER, b"{}")
                return
            answer = serve(request)
        except BaseException:  # noqa: BLE001 - anything goes back to the controller
            answer = _error(str(request.get("nodeid")), "the counting child failed:\n" + traceback.format_exc(limit=20))
        _write_frame(answer_w, _ANSWER, json.dumps(answer).encode())
        try:
            after()
        except BaseException:  # noqa: BLE001 - teardown trouble can reach no one now; the log has it
            traceback.print_exc()
    finally:
        os._exit(0)  # no atexit handlers, no flushing of buffers inherited from the agent


def _write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    data = memoryview(_HEADER.pack(kind, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> tuple[bytes, bytes]:
    kind, size = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return kind, _read_exactly(fd, size)


def _error(nodeid: str, message: str) -> dict[str, Any]:
    return {"event": "result", "nodeid": nodeid, "outcome": "error", "reports": [], "message": message,
            "samples": None, "iterations": None, "instructions": None, "instructions_reason": message}
