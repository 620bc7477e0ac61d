"""The ``ssh:HOST`` environment: an existing machine reached with the OpenSSH client.

HOST is any name from the user's OpenSSH config, so everything that can print an ssh
config works: Lima (``limactl show-ssh --format=config``), colima (``colima ssh-config``),
Vagrant (``vagrant ssh-config``), Multipass, WSL2 with sshd, a cloud VM. Per session:

* :meth:`SshEnvironment.check` runs one probe connection (:mod:`pytest_hostperf.agent.probe`)
  that tells apart "ssh cannot connect", "no python3 there" and "no pytest/pytest-benchmark
  there", and learns the remote home directory;
* :meth:`SshEnvironment.start_agent` streams one tar (what :mod:`..ship` selects: the
  project copy and the ``pytest_hostperf`` package, plus an owner record) into
  ``mkdir -p DIR && tar -x -C DIR`` on the target, which in the same connection lists
  the work dirs of other sessions there; those of sessions that are gone (a killed
  controller on this machine) are removed. Then ONE ssh connection stays open for the
  agent: every request is a line on it, so the per-test cost is a round trip on an
  established connection, not an ssh login;
* :meth:`SshEnvironment.stop` ends the agent (stdin EOF, then a remote kill by the
  token in its environment) and removes the remote work directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Final, Mapping, Sequence

from pytest_hostperf.agent import leftovers
from pytest_hostperf.agent.protocol import TOKEN_VAR
from pytest_hostperf.environments import labels, ship
from pytest_hostperf.environments.base import AgentLaunch, Environment, EnvironmentFailure, Mount, Transport
from pytest_hostperf.environments.process import spawn, tail_lines
from pytest_hostperf.environments.ssh.client import SshClient, shell_command
from pytest_hostperf.environments.ssh.transport import SshTransport
from pytest_hostperf.progress import SILENT, Reporter

#: Where per-session work directories live on the target, relative to its home.
REMOTE_CACHE: Final = ".cache/pytest-hostperf"
#: Default remote interpreter when none is given (tests and CI point it elsewhere).
PYTHON_VAR: Final = "HOSTPERF_SSH_PYTHON"
#: Above this, shipping the project on every session gets slow: say so.
LARGE_SHIPMENT: Final = 200 * 1024 * 1024

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


class SshEnvironment(Environment):
    """Runs the agent on an existing machine named in the user's OpenSSH config."""

    def __init__(self, host: str, session_id: str, project_dir: Path, work_dir: Path,
                 reporter: Reporter = SILENT, ssh_config: Path | None = None,
                 python: str | None = None, ssh_binary: str = "ssh", connect_timeout: int = 10,
                 probe_timeout: float = 30.0, ship_timeout: float = 600.0,
                 exclude: Sequence[Path] = ()) -> None:
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise EnvironmentFailure(f"ssh:{host}", "not a usable ssh host name",
                                     hint="use ssh:HOST with a Host name from your ssh config")
        self.host = host
        self.name = f"ssh:{host}"
        self.session_id = session_id
        self.project_dir = Path(project_dir).resolve()
        self.work_dir = Path(work_dir)
        self.ssh_config = Path(ssh_config).expanduser() if ssh_config is not None else None
        self.client = SshClient(self.name, host, self.ssh_config, ssh_binary, connect_timeout)
        self.python = python or os.environ.get(PYTHON_VAR) or "python3"
        self.ssh_binary = ssh_binary
        self.connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout
        self.ship_timeout = ship_timeout
        self.exclude = tuple(Path(p) for p in exclude)
        self._reporter = reporter
        self._token = f"{_SAFE_ID.sub('-', session_id)}-{uuid.uuid4().hex[:8]}"
        self._session_dir = _SAFE_ID.sub("-", session_id) or uuid.uuid4().hex[:12]
        self._probe: dict[str, Any] | None = None
        self._shipped_dir: Path | None = None   # the local project that was shipped
        self._remote_created = False            # whether stop() has something to remove
        self._transport: SshTransport | None = None
        self._log: IO[str] | None = None

    # -- Environment

    def check(self) -> None:
        if self._probe is None:
            self._probe = self.client.probe(self.python, self.probe_timeout)

    def mounts(self) -> Sequence[Mount]:
        return (Mount("remote", f"{self.remote_work_dir()}/hostperf-dir",
                      f"a directory on {self.host}'s own disk (under ~/{REMOTE_CACHE})"),)

    def launch_for(self, project_dir: Path, test_files: tuple[str, ...], pytest_args: tuple[str, ...]) -> AgentLaunch:
        local = Path(project_dir).resolve()
        if local != self.project_dir:
            self.project_dir, self._shipped_dir = local, None
        remote_project = self.remote_project_dir()

        def remote_path(arg: str) -> str:
            # Absolute paths into the project (an -c inifile, say) must point at the copy.
            path = Path(arg)
            if path.is_absolute() and path.is_relative_to(local):
                return str(Path(remote_project) / path.relative_to(local)).replace(os.sep, "/")
            return arg

        files = tuple(str(Path(f).relative_to(local)) if Path(f).is_absolute() and Path(f).is_relative_to(local)
                      else f for f in test_files)
        return AgentLaunch(self.remote_python(), self.remote_agent_dir(), remote_project, files,
                           tuple(remote_path(a) for a in pytest_args), self.name)

    def start_agent(self, launch: AgentLaunch) -> Transport:
        self.check()
        if self._transport is not None:  # a restart: the old agent must not linger
            self._transport.close()
            self._transport = None
        self.ship()
        words = ["cd", self.remote_agent_dir()]
        environ = {**launch.environ(), TOKEN_VAR: self._token}
        argv = launch.argv()
        # cd into the agent dir: `python -m` puts the cwd first on sys.path, and the
        # shipped package must win over anything lying around in the remote home.
        command = (shell_command(*words) + " && exec "
                   + shell_command("env", *(f"{k}={v}" for k, v in environ.items()), *argv))
        if self._log is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.work_dir / f"ssh-{_SAFE_ID.sub('-', self.host)}-agent.log",  # noqa: SIM115
                             "a", encoding="utf-8")
        try:
            # A controller that dies closes ssh's stdin: the remote agent sees EOF and leaves.
            process = spawn(self.ssh_argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
        except OSError as exc:
            raise EnvironmentFailure(self.name, f"cannot run {self.ssh_binary!r}: {exc}",
                                     hint="apt-get install openssh-client") from exc
        self._transport = SshTransport(process, self.host, self._log, on_orphan=self._kill_remote)
        return self._transport

    def stop(self) -> None:
        try:
            transport, self._transport = self._transport, None
            if transport is not None:
                transport.on_orphan = None  # the cleanup below kills whatever is left
                transport.close()
            if self._remote_created:
                self._remote_created = False
                self._shipped_dir = None
                self._ssh(self._removal_command([(self.remote_work_dir(), self._token)]), timeout=30)
        except Exception:  # noqa: BLE001 - stop() never raises; the session keeps stopping others
            pass
        finally:
            if self._log is not None:
                try:
                    self._log.close()
                except OSError:
                    pass
                self._log = None

    def describe(self) -> Mapping[str, Any]:
        facts: dict[str, Any] = {"host": self.host, "ssh_config": str(self.ssh_config) if self.ssh_config else None}
        if self._probe:
            facts["python"] = self._probe.get("executable")
            facts["platform"] = self._probe.get("platform")
        return facts

    def match_facts(self) -> Mapping[str, Any]:
        return {"ssh.host": self.host}

    def agent_start_timeout(self) -> float:
        return 120.0  # a cold remote pytest import on a small VM can take a while

    # -- paths on the target

    def remote_home(self) -> str:
        self.check()
        assert self._probe is not None
        return str(self._probe["home"])

    def remote_work_dir(self) -> str:
        """``~/.cache/pytest-hostperf/<session_id>`` on the target, absolute."""
        try:
            home = self.remote_home()
        except EnvironmentFailure:
            home = "~"
        return f"{home.rstrip('/')}/{REMOTE_CACHE}/{self._session_dir}"

    def remote_project_dir(self) -> str:
        return f"{self.remote_work_dir()}/project"

    def remote_agent_dir(self) -> str:
        """The directory on the target that holds the shipped ``pytest_hostperf`` package."""
        return f"{self.remote_work_dir()}/agent"

    def remote_python(self) -> str:
        if self.python.startswith("~/") and self._probe:
            return f"{str(self._probe['home']).rstrip('/')}/{self.python[2:]}"
        return self.python

    # -- ssh

    # -- ssh

    def ssh_argv(self, command: str) -> list[str]:
        """The ssh command line running ``command`` (already shell-quoted) on the host."""
        return self.client.argv(command)

    def _ssh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self.client.run(command, timeout)

    # -- shipping

    def ship(self) -> None:
        """Stream the project and the agent package to the remote work dir (once per project)."""
        if self._shipped_dir == self.project_dir:
            return
        self.check()
        assert self._probe is not None
        work = self.remote_work_dir()
        if self._probe.get("tar"):
            extract = shell_command("tar", "-x", "-C", work)
        else:  # no tar binary (rare minimal images): python's tarfile reads the stream
            extract = shell_command(self.remote_python(), "-c",
                                    "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|')"
                                    ".extractall(sys.argv[1])", work)
        # The same connection lists the other sessions' dirs (the package is there now).
        listing = (shell_command("cd", self.remote_agent_dir()) + " && "
                   + shell_command(self.remote_python(), "-B", "-m", "pytest_hostperf.agent.leftovers",
                                   self.remote_cache_dir()))
        command = shell_command("mkdir", "-p", work) + " && " + extract + " && { " + listing + "; }"
        started = time.monotonic()
        self._remote_created = True  # from here on stop() must clean up, whatever happens
        written, files, stdout = self._stream_tar(command)
        self._shipped_dir = self.project_dir
        self._reporter.step(f"shipped {ship.human_size(written)} ({files} files) to "
                            f"{self.host}:{work} in {time.monotonic() - started:.1f} s")
        if written > LARGE_SHIPMENT:
            self._reporter.warn("the project copy is large; move data out of the project "
                                "or into an excluded directory (.venv, node_modules, .git ...) to start faster")
        self._remove_leftovers(stdout)

    def remote_cache_dir(self) -> str:
        """``~/.cache/pytest-hostperf`` on the target, absolute: every session's dir is in it."""
        return self.remote_work_dir().rsplit("/", 1)[0]

    def _owner_record(self) -> bytes:
        return json.dumps({labels.SESSION: self._session_dir, "token": self._token,
                           **labels.Owner.current().labels()}).encode()

    def _remove_leftovers(self, listing: str) -> None:
        """Remove the work dirs of sessions (of this machine) whose controller is gone."""
        here = labels.Owner.current()
        stale = []
        for line in listing.splitlines():
            if not line.startswith(leftovers.MARK):
                continue
            try:
                record = json.loads(line[len(leftovers.MARK):])
                name, owner = str(record["dir"]), record["owner"]
            except (ValueError, KeyError, TypeError):
                continue
            token = owner.get("token") if isinstance(owner, dict) else None
            if (name != self._session_dir and labels.valid_session_id(name) and owner.get(labels.SESSION) == name
                    and isinstance(token, str) and labels.gone(owner, here)):
                stale.append((f"{self.remote_cache_dir()}/{name}", token))
        if stale:
            self._ssh(self._removal_command(stale), timeout=60)
            self._reporter.step(f"removed {len(stale)} work dir(s) of killed sessions from {self.host}")

    def _removal_command(self, dirs: Sequence[tuple[str, str]]) -> str:
        """Kill the agents of these (work dir, token) pairs, then remove the dirs."""
        kill = shell_command("cd", self.remote_agent_dir()) + " && { " + "; ".join(
            shell_command(self.remote_python(), "-B", "-m", "pytest_hostperf.agent.kill", token, work)
            for work, token in dirs) + "; }"
        return kill + "; " + shell_command("rm", "-rf", *(work for work, _ in dirs))

    def _stream_tar(self, command: str) -> tuple[int, int, str]:
        if shutil.which(self.ssh_binary) is None:
            raise EnvironmentFailure(self.name, f"no ssh client ({self.ssh_binary!r} is not on PATH)",
                                     hint="apt-get install openssh-client")
        with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as output:
            process = spawn(self.ssh_argv(command), stdin=subprocess.PIPE, stdout=output, stderr=errors)
            assert process.stdin is not None
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                process.kill()

            timer = threading.Timer(self.ship_timeout, expire)
            timer.daemon = True
            timer.start()
            written, files = 0, 0
            broken: Exception | None = None
            try:
                written, files = ship.write_tar(process.stdin, ship.members(self.project_dir, [self.work_dir,
                                                                                               *self.exclude]),
                                                empty_dirs=["hostperf-dir"],
                                                extra_files={"owner.json": self._owner_record()})
            except (BrokenPipeError, ConnectionError, OSError, ValueError) as exc:
                broken = exc  # the remote side ended early; its stderr says why
            finally:
                try:
                    process.stdin.close()
                except OSError:
                    pass
                code = process.wait()  # bounded: the timer kills ssh at the deadline
                timer.cancel()
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
            output.seek(0)
            stdout = output.read(1 << 20).decode(errors="replace")
        if timed_out.is_set():
            raise EnvironmentFailure(self.name, f"copying the project to {self.host} took longer than "
                                                f"{self.ship_timeout:.0f} s", log_tail=tail_lines(stderr, 8),
                                     hint="make the project smaller (data out of the project dir) "
                                          "or the connection faster")
        if code == 255:
            raise self.client.connection_failure(stderr)
        if code != 0 or broken is not None:
            raise EnvironmentFailure(
                self.name, f"copying the project to {self.host} failed (ssh exit code {code}"
                           + (f", {broken}" if broken else "") + ")",
                hint="the target needs a writable home directory with free space and tar",
                log_tail=tail_lines(stderr, 8))
        return written, files, stdout

    def _kill_remote(self) -> None:
        """SIGKILL what is left of this environment's agent on the target (best effort)."""
        self._ssh(shell_command("cd", self.remote_agent_dir()) + " && "
                  + shell_command(self.remote_python(), "-B", "-m", "pytest_hostperf.agent.kill", self._token,
                                  self.remote_work_dir()), timeout=20)
