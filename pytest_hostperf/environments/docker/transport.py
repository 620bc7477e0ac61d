"""The agent's stdin/stdout/stderr over one hijacked ``docker exec`` connection."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Final

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments.base import AgentDied, AgentTimeout, LineBuffer, LineTooLong, Transport, failure_text
from pytest_hostperf.environments.docker.engine import docker_endpoint
from pytest_hostperf.environments.process import signal_name

if TYPE_CHECKING:
    import docker

#: The docker backend mounts the pytest_hostperf package under this directory.
AGENT_PARENT: Final = "/opt/hostperf-agent"
PROJECT_PATH: Final = "/project"
#: A stream frame's header: stream type (1 stdout, 2 stderr), 3 bytes zero, big-endian length.
_HEADER: Final = struct.Struct(">BxxxI")


class DockerExecTransport(Transport):
    """The agent's stdin/stdout/stderr over one hijacked ``docker exec`` connection.

    With ``tty=False`` the engine multiplexes the output in frames (:data:`_HEADER`).
    Stdout carries the protocol; stderr is the agent's log, kept as a tail for error
    messages. A frame may not announce more than a protocol line may hold.
    """

    def __init__(self, client: docker.DockerClient, container_name: str, exec_id: str, sock: Any,
                 token: str, python: str, user: str) -> None:
        self._client = client
        self._container_name = container_name
        self._exec_id = exec_id
        self._sock = sock
        self._token = token
        self._python = python
        self._user = user     # the killer runs as the agent's uid: no capabilities, same uid
        self._frames = bytearray()
        self._stdout = LineBuffer(what=f"the agent in container {container_name}")
        self._stderr: deque[str] = deque(maxlen=200)
        self._stderr_pending = b""
        self._eof = False
        self._closed = False
        self.owner: Any = None

    # -- Transport

    def send(self, data: bytes) -> None:
        if self._closed:
            raise AgentDied(f"the agent channel to container {self._container_name} is closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AgentDied(self._death_message(f"writing to it failed ({exc})")) from exc

    def read_line(self, deadline: float) -> bytes:
        while True:
            line = self._stdout.pop()
            if line is not None:
                return line
            if self._eof or self._closed:
                raise AgentDied(self._death_message("its output ended"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout(f"the agent in container {self._container_name} sent no complete "
                                   f"protocol line in time")
            self._receive(remaining)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # EOF on the agent's stdin: the agent leaves its request loop by itself.
            self._sock.shutdown(socket.SHUT_WR)
            self._drain(deadline=time.monotonic() + 1.0)
        except (OSError, LineTooLong):
            pass
        finally:
            # shutdown, not only close: the SDK's wrapper (``owner``) holds the same connection,
            # so close() alone leaves it open, and an engine still sending the agent's output
            # (a 64 MiB line nobody reads) then blocks on it, and with it every exec and the
            # removal of this container.
            _quiet(lambda: self._sock.shutdown(socket.SHUT_RDWR))
            # docker-py's HTTP response (kept on the SocketIO as ``_response``) holds a makefile()
            # of the socket: closing the socket alone leaves its fd open, a ResourceWarning when
            # collected. The response first (its close flushes the reader it holds), then the socket.
            response = getattr(self.owner, "_response", None)
            if response is not None:
                _quiet(response.close)
            _quiet(self._sock.close)
            owner, self.owner = self.owner, None
            if owner is not None:
                _quiet(owner.close)
        if self._exec_running():
            self._kill_inside()

    def log_tail(self) -> str:
        lines = list(self._stderr)
        if self._stderr_pending:
            lines.append(self._stderr_pending.decode(errors="replace"))
        noise = self._stdout.tail_text()
        return "\n".join(lines + ([noise] if noise else []))

    # -- details

    def exec_info(self) -> dict[str, Any]:
        """``docker exec inspect`` of the agent process (Running, ExitCode, Pid)."""
        return dict(self._client.api.exec_inspect(self._exec_id))

    def _receive(self, timeout: float) -> None:
        pending = getattr(self._sock, "pending", None)  # TLS sockets may hold decrypted bytes
        if not (pending and pending()):
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                return
        try:
            data = self._sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return
        self._demux(data)

    def _demux(self, data: bytes) -> None:
        self._frames += data
        while len(self._frames) >= _HEADER.size:
            stream, length = _HEADER.unpack_from(self._frames)
            if length > protocol.MAX_LINE_BYTES:
                self._frames.clear()
                raise LineTooLong(f"the agent in container {self._container_name} sent an output frame of "
                                  f"{length} bytes, over the {protocol.MAX_LINE_BYTES >> 20} MiB limit")
            if len(self._frames) < _HEADER.size + length:
                return
            payload = bytes(self._frames[_HEADER.size:_HEADER.size + length])
            del self._frames[:_HEADER.size + length]
            if stream == 1:
                self._stdout.feed(payload)
            else:
                self._feed_stderr(payload)

    def _feed_stderr(self, payload: bytes) -> None:
        *complete, pending = (self._stderr_pending + payload).split(b"\n")
        # The log tail is for error messages: an endless line is cut, not buffered.
        self._stderr_pending = pending[-4096:]
        self._stderr.extend(line[-4096:].decode(errors="replace").rstrip("\r") for line in complete)

    def _drain(self, deadline: float) -> None:
        while not self._eof and time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def _exec_running(self) -> bool:
        try:
            return bool(self.exec_info().get("Running"))
        except Exception:  # noqa: BLE001 - container already gone: nothing left to kill
            return False

    def _kill_inside(self) -> None:
        try:
            api = self._client.api
            # Detached: the engine may never end the killer's output stream (seen after an
            # agent's 64 MiB line: every later exec of that container stayed "running"),
            # and a session must not hang at its end on it. stop() removes the container anyway.
            api.exec_start(api.exec_create(self._container_name,
                                           [self._python, "-m", "pytest_hostperf.agent.kill", self._token],
                                           environment={"PYTHONPATH": AGENT_PARENT, "PYTHONDONTWRITEBYTECODE": "1"},
                                           user=self._user)["Id"], detach=True)
        except Exception:  # noqa: BLE001 - stop() removes the container anyway
            pass

    def _exit_code(self) -> int | None:
        # The engine records the exit code a moment after the stream ends.
        for _ in range(50):
            try:
                info = self.exec_info()
            except Exception:  # noqa: BLE001 - container removed: no code to report
                return None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.02)
        return None

    def _death_message(self, what: str) -> str:
        if not _engine_answers(self._client):
            # The engine itself went away (crashed, restarted, its socket gone): say that,
            # not "the agent died", and nothing below can be asked of it anyway.
            return failure_text(
                f"environment 'docker': the Docker engine at {docker_endpoint()[0]} stopped answering while "
                f"the agent in container {self._container_name} was running ({what})", log_tail=self.log_tail(),
                hint="check the engine (docker info, its log); once it answers again, the next session removes "
                     "what this one left in it (or run `hostperf sweep`)")
        code = self._exit_code()
        state = container_state(self._client, self._container_name)
        # `docker kill` ends the agent's stream a moment before the engine marks the container.
        settle = time.monotonic() + (1.0 if code == 137 else 0.0)
        while state.get("Status") == "running" and time.monotonic() < settle:
            time.sleep(0.05)
            state = container_state(self._client, self._container_name)
        text = f"environment 'docker': the agent in container {self._container_name} died: {what}"
        text += f"; exit code {code}" if code is not None else "; exit code unknown"
        if code is not None and code > 128:
            text += f" (killed by {signal_name(code - 128)})"
        text += f"; container status {state.get('Status', 'gone')}"
        if state.get("OOMKilled"):
            text += " (killed by the kernel's OOM killer: raise --hostperf-docker-memory)"
        if state.get("Status") not in (None, "running"):
            hint = "the container was stopped from outside (docker kill/stop/rm, the OOM killer); the next test " \
                   "gets a fresh container"
        else:
            hint = (f"run the agent by hand to see why: docker exec -it {self._container_name} "
                    f"{self._python} -m pytest_hostperf.agent --env docker --rootdir {PROJECT_PATH} -- <tests>")
        return failure_text(text, log_tail=self.log_tail(), hint=hint)


def container_status(client: docker.DockerClient, name: str) -> str:
    """``running``, ``exited``... or ``gone`` (for messages and the restart decision)."""
    return str(container_state(client, name).get("Status", "gone"))


def container_state(client: docker.DockerClient, name: str) -> dict[str, Any]:
    """The container's ``State`` (Status, OOMKilled, ...); empty when it or the engine is gone."""
    try:
        return dict(client.api.inspect_container(name)["State"])
    except Exception:  # noqa: BLE001 - only for a message or a "not running" decision
        return {}


def _engine_answers(client: docker.DockerClient) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure: the engine does not answer
        return False


def _quiet(action: Callable[[], object]) -> None:
    try:
        action()
    except OSError:
        pass
