"""A transport over a child process's stdin/stdout (native agent, ssh)."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections import deque
from typing import IO, Final

from pytest_hostperf.environments.base import AgentDied, AgentTimeout, LineBuffer, Transport
from pytest_hostperf.environments.process import signal_name, spawn_piped, stop_process

#: stderr is read in pieces of at most this size: a test that writes gigabytes without a
#: newline must not make the controller buffer them.
_STDERR_PIECE: Final = 64 * 1024

__all__ = ["PipeTransport", "spawn_piped"]


class PipeTransport(Transport):
    """Protocol on the child's stdout; its stderr is drained into a bounded log tail."""

    def __init__(self, process: subprocess.Popen[bytes], log: IO[str] | None = None) -> None:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self.process = process
        self._buffer = LineBuffer()
        self._stderr_tail: deque[str] = deque(maxlen=200)
        self._log = log
        # stderr must be drained concurrently or a chatty test blocks the agent on a full pipe.
        self._drain = threading.Thread(target=self._drain_stderr, name="hostperf-agent-stderr", daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        read = self.process.stderr.readline
        for raw in iter(lambda: read(_STDERR_PIECE), b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self._stderr_tail.append(line)
            if self._log is not None:
                try:
                    self._log.write(line + "\n")
                    self._log.flush()
                except ValueError:  # log closed during shutdown
                    pass

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise AgentDied(f"agent input closed ({exc})") from exc

    def read_line(self, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            line = self._buffer.pop()
            if line is not None:
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout("no answer from the agent in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.process.wait(timeout=5) if self.process.poll() is None else self.process.returncode
                self._drain.join(timeout=1)
                raise AgentDied(f"agent was killed by {signal_name(-code)}" if code < 0 else
                                f"agent exited with code {code}")
            self._buffer.feed(chunk)

    def log_tail(self) -> str:
        return "\n".join(list(self._buffer.tail) + list(self._stderr_tail))

    def close(self) -> None:
        # The agent and whatever the test body started (its process group) go at once.
        stop_process(self.process)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        # stderr belongs to the drain thread until EOF ends it (the child is gone now); left
        # open it is a ResourceWarning when collected, an error under filterwarnings=error.
        self._drain.join(timeout=1)
        if self.process.stderr is not None and not self._drain.is_alive():
            try:
                self.process.stderr.close()
            except OSError:
                pass
