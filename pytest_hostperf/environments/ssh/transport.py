"""The agent's stdin/stdout over one ssh connection."""

from __future__ import annotations

import subprocess
from typing import IO, Callable

from pytest_hostperf.environments.base import AgentDied
from pytest_hostperf.environments.pipe import PipeTransport


class SshTransport(PipeTransport):
    """The agent's stdin/stdout over one ssh connection; ssh's stderr is the log tail.

    Closing first sends EOF (an idle agent leaves by itself and ssh exits with it); if
    ssh is still there after ``grace_s`` or the connection broke, the local ssh is killed
    and ``on_orphan`` removes whatever may be left running on the target.
    """

    def __init__(self, process: subprocess.Popen[bytes], host: str, log: IO[str] | None = None,
                 on_orphan: Callable[[], None] | None = None, grace_s: float = 2.0) -> None:
        super().__init__(process, log)
        self.host = host
        self.on_orphan = on_orphan
        self.grace_s = grace_s
        self._closed = False

    def send(self, data: bytes) -> None:
        if self._closed:
            raise AgentDied(f"the agent channel to ssh host {self.host!r} is closed")
        try:
            super().send(data)
        except AgentDied as exc:
            # A dropped connection shows first as a broken pipe when a request is written.
            raise AgentDied(self._death_message(str(exc))) from None

    def read_line(self, deadline: float) -> bytes:
        if self._closed:
            raise AgentDied(f"the agent channel to ssh host {self.host!r} is closed")
        try:
            return super().read_line(deadline)
        except AgentDied as exc:
            raise AgentDied(self._death_message(str(exc))) from None
        except subprocess.TimeoutExpired:  # output ended but ssh lingers: same thing
            raise AgentDied(self._death_message("its output ended")) from None

    def _death_message(self, what: str) -> str:
        code = self.process.poll()
        text = f"the agent on ssh host {self.host!r} is gone: {what}"
        if code == 255:
            text += " (255: the connection failed or the remote agent was killed by a signal)"
        return text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()  # EOF: an idle agent exits, and ssh with it
            except OSError:
                pass
            try:
                self.process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass
        orphan = self.process.poll() is None or self.process.returncode == 255
        super().close()
        if orphan and self.on_orphan is not None:
            try:
                self.on_orphan()
            except Exception:  # noqa: BLE001 - best effort; stop() cleans up the rest
                pass
