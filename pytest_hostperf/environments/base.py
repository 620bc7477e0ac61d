"""What every environment backend provides, and the agent client they all share.

A backend (native, docker, qemu, ssh) knows how to make a place where the agent can
run and how to start the agent there; it hands back a :class:`Transport` (a byte pipe
to the agent). :class:`AgentClient` speaks the protocol over any transport, so one code
path measures every environment.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments.process import tail_lines
from pytest_hostperf.progress import Reporter
from pytest_hostperf.settings import Settings


def failure_text(head: str, hint: str = "", log_tail: str = "") -> str:
    """What went wrong, the fix, and the last lines of output: the shape of every error."""
    text = head
    if hint:
        text += f"\n  hint: {hint}"
    tail = tail_lines(log_tail, 20)
    if tail:
        text += "\n  last output:\n" + "\n".join("    " + line for line in tail.splitlines())
    return text


@dataclasses.dataclass(frozen=True)
class EnvironmentContext:
    """What a backend is built from: the session's settings and where it may put things.

    Handed to :func:`~pytest_hostperf.environments.registry.create_backend` (and to the
    ``pytest_hostperf_make_environment`` hook), never the session object itself.
    """

    settings: Settings
    session_id: str      # labels every resource, so a sweep can find what a killed run left
    work_dir: Path       # private to this session, removed at its end
    reporter: Reporter   # progress lines (image builds, VM boots)


class EnvironmentFailure(Exception):
    """An environment could not be prepared or used; the message names it and the fix."""

    def __init__(self, env: str, message: str, hint: str = "", log_tail: str = "") -> None:
        self.env = env
        self.hint = hint
        self.log_tail = log_tail
        super().__init__(failure_text(f"environment {env!r}: {message}", hint, log_tail))


class AgentTimeout(Exception):
    """The agent did not answer in time."""


class AgentDied(Exception):
    """The agent's channel closed (the process exited or the VM/container went away)."""


class LineTooLong(AgentDied):
    """The agent sent a line over the limit: the channel cannot be trusted any more."""


class Transport(abc.ABC):
    """A bidirectional byte stream to one agent process."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Write ``data`` to the agent's input."""

    @abc.abstractmethod
    def read_line(self, deadline: float) -> bytes:
        """Return the next line (with its newline) from the agent's protocol channel.

        ``deadline`` is a ``time.monotonic()`` value. Raises :class:`AgentTimeout` when it
        passes and :class:`AgentDied` at end of stream.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the channel and make sure the agent process is gone. Idempotent."""

    def log_tail(self) -> str:
        """The last lines the agent (or its VM console) wrote besides protocol, for errors."""
        return ""


@dataclasses.dataclass(frozen=True)
class AgentLaunch:
    """How a backend should start the agent, in the environment's own paths."""

    python: str            # interpreter inside the environment, e.g. "python3"
    pythonpath: str        # directory that contains the pytest_hostperf package
    project_dir: str       # the project (pytest rootdir) as seen inside the environment
    test_files: tuple[str, ...]  # paths relative to project_dir to collect
    pytest_args: tuple[str, ...]  # extra args: -c inifile, --benchmark-* options, ...
    env: str               # environment name, e.g. "docker"
    #: The project's import roots relative to ``project_dir`` (``"."``, ``"src"``), in
    #: priority order: the agent puts them first on sys.path, ahead of site-packages.
    import_roots: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The agent's command line (no shell involved anywhere)."""
        roots = [arg for root in self.import_roots for arg in ("--import-root", root)]
        return [
            self.python, "-m", "pytest_hostperf.agent",
            "--env", self.env, "--rootdir", self.project_dir, *roots, "--",
            *self.pytest_args, *self.test_files,
        ]

    def environ(self) -> dict[str, str]:
        """Variables the agent needs; backends add them to the environment they start."""
        return {
            "PYTHONPATH": self.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTEST_ADDOPTS": "",
        }


@dataclasses.dataclass(frozen=True)
class Mount:
    """One place ``hostperf_dir`` can live in an environment."""

    name: str               # "host", "bind", "volume", "tmpfs", "layer", "guest", "share"
    path: str               # directory inside the environment
    description: str = ""


class Environment(abc.ABC):
    """One backend instance for a session: prepares, starts the agent, cleans up."""

    #: Environment name as the user writes it in ``--hostperf-envs`` (``ssh:HOST`` for ssh).
    name: str

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`EnvironmentFailure` (with a fix hint) when this backend cannot work."""

    @abc.abstractmethod
    def mounts(self) -> Sequence[Mount]:
        """The mounts offered for ``hostperf_dir``; the first is the default."""

    @abc.abstractmethod
    def start_agent(self, launch: AgentLaunch) -> Transport:
        """Boot/create what is needed and start the agent; return its transport."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Remove everything this environment created. Idempotent, safe after errors."""

    def use_mounts(self, names: Sequence[str]) -> None:
        """The mounts the session's items use, told once before the agent starts.

        A backend may offer mounts only on request (the qemu environment's ``share-9p``
        needs another guest kernel) or prepare only what is used; the default ignores it.
        """
        return None

    def mount_problem(self, mount: str) -> str | None:
        """Why ``mount`` cannot be offered here (its items are skipped with it), or None."""
        return None

    def mount_facts(self, mount: str) -> Mapping[str, Any]:
        """What the outside knows of ``mount`` (the server of a share, its host-side options)."""
        return {}

    def describe(self) -> Mapping[str, Any]:
        """What the controller can see of the environment from outside (engine, accel...)."""
        return {}

    def match_facts(self) -> Mapping[str, Any]:
        """Outside facts that must match for a baseline to apply (engine kind, accelerator)."""
        return {}

    @property
    def fixed_layout(self) -> bool:
        """True when this environment's agents start without address-space randomisation,
        so a fresh agent of the same code lands exactly where the last one did."""
        return False

    def launch_for(self, project_dir: Path, test_files: tuple[str, ...], pytest_args: tuple[str, ...]) -> AgentLaunch:
        """The agent launch in this environment's own paths; the default is the host's."""
        import sys

        return AgentLaunch(sys.executable, str(package_parent()), str(project_dir), test_files, pytest_args, self.name)

    def agent_start_timeout(self) -> float:
        """Seconds to wait for the agent's ``ready`` message (a VM boot needs more)."""
        return 60.0

    def start_counting_agent(self, launch: AgentLaunch) -> Transport:
        """Start a second agent that counts instructions under callgrind (``count`` requests).

        Backends that can count override this; the default refuses with the reason, which
        the item's record carries (its time is measured and judged as usual).
        """
        raise EnvironmentFailure(self.name, f"instruction counting is not supported in {self.name} environments "
                                            "(it works natively and in docker)")


class AgentClient:
    """Speaks the agent protocol over a transport: one request, one answer."""

    def __init__(self, env: str, transport: Transport) -> None:
        self.env = env
        self.transport = transport
        self.hello: dict[str, Any] = {}

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        self.hello = self._expect("ready", timeout, "starting the agent")
        if self.hello.get("protocol") != protocol.PROTOCOL_VERSION:
            raise EnvironmentFailure(
                self.env,
                f"agent speaks protocol {self.hello.get('protocol')!r}, "
                f"controller speaks {protocol.PROTOCOL_VERSION}",
                hint="rebuild the environment's image (hostperf image build) so both sides match",
            )
        return self.hello

    def request(self, message: dict[str, Any], expect: str | tuple[str, ...], timeout: float,
                doing: str) -> dict[str, Any]:
        """Send ``message``; the first answer whose event is (one of) ``expect``."""
        self.transport.send(protocol.encode(message))
        return self._expect(expect, timeout, doing)

    def _expect(self, event: str | tuple[str, ...], timeout: float, doing: str) -> dict[str, Any]:
        events = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        while True:
            line = self.transport.read_line(deadline)
            message = protocol.decode(line)
            if message is None:
                continue
            if message.get("event") == "fatal":
                raise EnvironmentFailure(self.env, f"agent failed while {doing}: {message.get('message')}",
                                        log_tail=self.transport.log_tail())
            if message.get("event") in events:
                return message

    def shutdown(self, timeout: float = 10.0) -> None:
        try:
            self.transport.send(protocol.encode({"op": "shutdown"}))
            self._expect("bye", timeout, "shutting down")
        except Exception:  # noqa: BLE001 - best effort: close() below kills it anyway
            pass
        finally:
            self.transport.close()


class LineBuffer:
    """Splits a byte stream into lines and remembers the non-protocol tail for errors.

    A line may be at most ``limit`` bytes (protocol.MAX_LINE_BYTES): a longer one means
    the other side is broken or hostile, and :meth:`feed` raises :class:`LineTooLong`
    instead of buffering without bound.
    """

    def __init__(self, keep: int = 200, limit: int | None = None, what: str = "the agent") -> None:
        self._partial: list[bytes] = []   # the unfinished line, in the chunks it came in
        self._partial_size = 0
        self._lines: deque[bytes] = deque()
        self.tail: deque[str] = deque(maxlen=keep)
        self.limit = protocol.MAX_LINE_BYTES if limit is None else limit
        self.what = what

    def feed(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        if complete:
            complete[0] = b"".join([*self._partial, complete[0]])
            self._partial, self._partial_size = [], 0
        for line in complete:
            self._check(line)
            if protocol.PREFIX in line:
                self._lines.append(line + b"\n")
            else:
                self.tail.append(line.decode(errors="replace").rstrip("\r"))
        if rest:
            self._partial.append(rest)
            self._partial_size += len(rest)
            if self._partial_size > self.limit:
                line = b"".join(self._partial)
                self._partial, self._partial_size = [], 0
                self._check(line)

    def _check(self, line: bytes) -> None:
        if len(line) > self.limit:
            size = f"{self.limit >> 20} MiB" if self.limit >= 1 << 20 else f"{self.limit} bytes"
            raise LineTooLong(f"{self.what} sent a line longer than {size} "
                              f"(it starts with {line[:80]!r}); the channel is dropped and the agent restarted")

    def pop(self) -> bytes | None:
        return self._lines.popleft() if self._lines else None

    def tail_text(self) -> str:
        return "\n".join(self.tail)


def package_parent() -> Path:
    """The directory holding the ``pytest_hostperf`` package, to ship to environments."""
    return Path(__file__).resolve().parent.parent.parent
