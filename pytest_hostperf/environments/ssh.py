"""The ``ssh:HOST`` environment: an existing machine reached with the OpenSSH client.

HOST is any name from the user's OpenSSH config, so everything that can print an ssh
config works: Lima (``limactl show-ssh --format=config``), colima (``colima ssh-config``),
Vagrant (``vagrant ssh-config``), Multipass, WSL2 with sshd, a cloud VM.

The OpenSSH binary is driven with argv lists only; the one string that ssh hands to the
remote login shell is built from :func:`shlex.quote`-d words (so the remote side must
have a POSIX shell). Per session:

* :meth:`SshEnvironment.check` runs one probe connection (``python3 -c PROBE``) that
  tells apart "ssh cannot connect", "no python3 there" and "no pytest/pytest-benchmark
  there", and learns the remote home directory;
* :meth:`SshEnvironment.start_agent` streams one tar (project copy + the
  ``pytest_hostperf`` package) into ``mkdir -p DIR && tar -x -C DIR`` on the target,
  then keeps ONE ssh connection open for the agent: every request is a line on it, so
  the per-test cost is a round trip on an established connection, not an ssh login;
* :meth:`SshEnvironment.stop` ends the agent (stdin EOF, then a remote kill by the
  token in its environment) and removes the remote work directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Final, Iterator, Mapping, Sequence

from pytest_hostperf.environments.base import (
    AgentDied,
    AgentLaunch,
    Environment,
    EnvironmentFailure,
    Mount,
    Transport,
    package_parent,
)
from pytest_hostperf.environments.pipe import PipeTransport, spawn

Progress = Callable[[str], None]

#: Where per-session work directories live on the target, relative to its home.
REMOTE_CACHE: Final = ".cache/pytest-hostperf"
PACKAGE: Final = "pytest_hostperf"
#: Oldest Python the agent code supports (pyproject's requires-python).
MIN_PYTHON: Final = (3, 9)
#: Environment variable set on the remote agent; the remote killer finds it by this.
TOKEN_VAR: Final = "HOSTPERF_SSH_TOKEN"
#: Default remote interpreter when none is given (tests and CI point it elsewhere).
PYTHON_VAR: Final = "HOSTPERF_SSH_PYTHON"

#: Directory names never shipped: VCS data, caches, virtualenvs, build debris.
EXCLUDED_DIRS: Final = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".benchmarks", ".venv", "venv",
    ".tox", ".nox", ".mypy_cache", ".ruff_cache", ".hypothesis", ".eggs", "node_modules",
})
EXCLUDED_SUFFIXES: Final = (".pyc", ".pyo", ".egg-info")
#: Above this, shipping the project on every session gets slow: say so.
LARGE_SHIPMENT: Final = 200 * 1024 * 1024

CONFIG_HINTS: Final = (
    "`ssh HOST true` must work in this shell without a password or a prompt; "
    "for Lima: limactl show-ssh --format=config NAME >> ~/.ssh/config, "
    "colima: colima ssh-config >> ~/.ssh/config, "
    "Vagrant: vagrant ssh-config >> ~/.ssh/config (or pass the file with --hostperf-ssh-config)"
)

_PROBE_MARK: Final = "@@hostperf-probe@@ "
#: Runs on the target's python: what the agent needs, as one marked JSON line (shell rc
#: files may print banners on stdout, hence the mark). Old-Python-safe syntax, so that a
#: too old interpreter is reported as such instead of as a SyntaxError.
_PROBE: Final = r"""
import json, os, platform, shutil, sys
info = {"version": list(sys.version_info[:3]), "executable": sys.executable,
        "home": os.path.expanduser("~"), "platform": platform.platform(),
        "tar": shutil.which("tar") if hasattr(shutil, "which") else None, "modules": {}}
for name in ("pytest", "pytest_benchmark"):
    try:
        module = __import__(name)
        info["modules"][name] = str(getattr(module, "__version__", "?"))
    except Exception as exc:
        info["modules"][name] = None
        info.setdefault("import_errors", {})[name] = "%s: %s" % (type(exc).__name__, exc)
sys.stdout.write("@@hostperf-probe@@ " + json.dumps(info) + "\n")
"""

#: Runs on the target's python: SIGKILL every process carrying the token in its
#: environment (Linux /proc), else every agent whose command line names the work dir.
_KILLER: Final = r"""
import os, signal, subprocess, sys
token = ("%s=" % sys.argv[1] + sys.argv[2]).encode()
workdir = sys.argv[3]
mine = {os.getpid(), os.getppid()}
def kill(pid):
    if pid not in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
if os.path.isdir("/proc/self"):
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/environ" % name, "rb") as handle:
                    if token in handle.read().split(b"\0"):
                        kill(int(name))
            except OSError:
                pass
else:
    out = subprocess.run(["ps", "-axo", "pid=,command="], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    for line in out.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit() and workdir in command and "pytest_hostperf.agent" in command:
            kill(int(pid))
"""

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------- helpers

def shell_command(*words: str) -> str:
    """A simple command for the remote shell, every word :func:`shlex.quote`-d."""
    return " ".join(shlex.quote(w) for w in words)


def interpreter_word(path: str) -> str:
    """The interpreter as a shell word; a leading ``~/`` still means the remote home.

    Used only before the home is known (the probe); afterwards the path is made absolute.
    """
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _last_lines(text: str, count: int = 8) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _excluded(name: str, path: Path) -> bool:
    if name in EXCLUDED_DIRS or name.endswith(EXCLUDED_SUFFIXES) or name == ".DS_Store":
        return True
    # Any virtualenv, whatever its name.
    return not path.is_symlink() and path.is_dir() and (path / "pyvenv.cfg").is_file()


def iter_tree(root: Path, skip: Sequence[Path] = ()) -> Iterator[Path]:
    """Every directory, file and symlink under ``root`` that is worth shipping, root first."""
    skipped = {p.resolve() for p in skip}
    yield root
    for current, dirnames, filenames in os.walk(root):
        base = Path(current)
        keep = []
        for name in sorted(dirnames):
            path = base / name
            if _excluded(name, path) or path.resolve() in skipped:
                continue
            yield path  # a symlink to a directory is shipped as the link, not followed
            if not path.is_symlink():
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = base / name
            if _excluded(name, path) or (not path.is_file() and not path.is_symlink()):
                continue  # sockets, fifos, devices
            yield path


class _CountingWriter:
    """A write-only file object that counts what passes (tarfile stream target)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.written = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.written += len(data)
        return len(data)


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The local owner means nothing on the target: files belong to whoever extracts.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# --------------------------------------------------------------------------- transport

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
        super().send(data)

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


# --------------------------------------------------------------------------- environment

class SshEnvironment(Environment):
    """Runs the agent on an existing machine named in the user's OpenSSH config."""

    def __init__(self, host: str, session_id: str, project_dir: Path, work_dir: Path,
                 progress: Progress | None = None, ssh_config: Path | None = None,
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
        self.python = python or os.environ.get(PYTHON_VAR) or "python3"
        self.ssh_binary = ssh_binary
        self.connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout
        self.ship_timeout = ship_timeout
        self.exclude = tuple(Path(p) for p in exclude)
        self._progress: Progress = progress or (lambda line: None)
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
            self._probe = self._run_probe()

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
            process = spawn(self.ssh_argv(command), dict(os.environ))
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
                work = self.remote_work_dir()
                command = (shell_command(self.remote_python(), "-c", _KILLER, TOKEN_VAR, self._token, work)
                           + "; " + shell_command("rm", "-rf", work))
                self._ssh(command, timeout=30)
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

    def ssh_argv(self, command: str) -> list[str]:
        """The ssh command line running ``command`` (already shell-quoted) on the host."""
        # -T: no pty (a pty would echo input and mangle bytes); -e none: fully transparent.
        argv = [self.ssh_binary, "-T", "-e", "none",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                # a dead network must end the agent channel, not hang it until the test timeout
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                # forwardings from the user's config would be set up (and fail) per connection
                "-o", "ClearAllForwardings=yes",
                # never become a ControlPersist master: it would outlive us holding our pipes
                # (an existing master of the user's is still used, which only makes us faster)
                "-o", "ControlMaster=no"]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        return [*argv, "--", self.host, command]

    def _ssh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self.ssh_binary)
        if binary is None:
            raise EnvironmentFailure(self.name, f"no ssh client ({self.ssh_binary!r} is not on PATH)",
                                     hint="apt-get install openssh-client (macOS and Windows ship one)")
        try:
            return subprocess.run(  # noqa: S603 - argv list, never a shell
                self.ssh_argv(command), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise EnvironmentFailure(self.name, f"ssh {self.host} did not finish within {timeout:.0f} s",
                                     hint="is the machine up and its sshd answering? " + CONFIG_HINTS,
                                     log_tail=_last_lines(err)) from None

    def _run_probe(self) -> dict[str, Any]:
        if self.ssh_config is not None and not self.ssh_config.is_file():
            raise EnvironmentFailure(self.name, f"the ssh config file {self.ssh_config} does not exist",
                                     hint="check --hostperf-ssh-config")
        python = self.python
        result = self._ssh(interpreter_word(python) + " " + shell_command("-c", _PROBE), timeout=self.probe_timeout)
        stderr = result.stderr or ""
        if result.returncode == 255:
            raise self._connection_failure(stderr)
        if result.returncode == 127 or (result.returncode != 0 and "not found" in stderr):
            raise EnvironmentFailure(
                self.name, f"there is no {python!r} on {self.host} (exit code {result.returncode})",
                hint=f"install Python >= {'.'.join(map(str, MIN_PYTHON))} there (apt-get install python3) "
                     "or make it reachable on the PATH of non-interactive ssh sessions "
                     f"(check: ssh {self.host} {python} -V), or give its full path",
                log_tail=_last_lines(stderr))
        info = None
        for line in (result.stdout or "").splitlines():
            if line.startswith(_PROBE_MARK):
                try:
                    info = json.loads(line[len(_PROBE_MARK):])
                except ValueError:
                    info = None
        if result.returncode != 0 or not isinstance(info, dict):
            raise EnvironmentFailure(
                self.name, f"probing {python!r} on {self.host} failed (exit code {result.returncode})",
                hint=f"run it by hand: ssh {self.host} {python} -c 'import pytest, pytest_benchmark'",
                log_tail=_last_lines(stderr + "\n" + (result.stdout or "")))
        version = tuple(info.get("version") or ())
        if version < MIN_PYTHON:
            raise EnvironmentFailure(
                self.name, f"{python!r} on {self.host} is Python {'.'.join(map(str, version))}; "
                           f"the agent needs {'.'.join(map(str, MIN_PYTHON))} or newer",
                hint="install a newer python3 there and point the ssh environment at it")
        missing = [name.replace("_", "-") for name, found in (info.get("modules") or {}).items() if not found]
        if missing:
            errors = info.get("import_errors") or {}
            raise EnvironmentFailure(
                self.name, f"{info.get('executable') or python} on {self.host} cannot import "
                           f"{' and '.join(missing)}",
                hint=f"on the target: {python} -m pip install pytest pytest-benchmark "
                     f"(for example: ssh {self.host} {python} -m pip install --user pytest pytest-benchmark)",
                log_tail="\n".join(f"{k}: {v}" for k, v in errors.items()))
        if not info.get("home"):
            raise EnvironmentFailure(self.name, f"cannot tell the home directory on {self.host}",
                                     hint="the remote user needs a home directory (for ~/.cache)")
        return info

    def _connection_failure(self, stderr: str) -> EnvironmentFailure:
        text = stderr.lower()
        tail = _last_lines(stderr)
        if "could not resolve hostname" in text or "name or service not known" in text:
            what = f"ssh does not know the host {self.host!r}"
            if self.ssh_config is not None:
                what += f" (looked in {self.ssh_config})"
        elif "permission denied" in text or "too many authentication failures" in text:
            what = f"ssh {self.host} was refused: authentication failed (BatchMode: no password prompts)"
        elif "host key verification failed" in text or "remote host identification has changed" in text:
            what = f"ssh {self.host} refused the host key"
        elif any(s in text for s in ("connection refused", "timed out", "no route to host", "network is unreachable",
                                     "connection closed", "connection reset")):
            what = f"cannot reach {self.host!r} (is the machine up and its sshd running?)"
        else:
            what = f"ssh {self.host} failed (exit code 255)"
        return EnvironmentFailure(self.name, what, hint=CONFIG_HINTS, log_tail=tail)

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
        command = shell_command("mkdir", "-p", work) + " && " + extract
        started = time.monotonic()
        self._remote_created = True  # from here on stop() must clean up, whatever happens
        written, files = self._stream_tar(command)
        self._shipped_dir = self.project_dir
        self._progress(f"hostperf: {self.name}: shipped {_human_size(written)} ({files} files) to "
                       f"{self.host}:{work} in {time.monotonic() - started:.1f} s")
        if written > LARGE_SHIPMENT:
            self._progress(f"hostperf: {self.name}: the project copy is large; move data out of the project "
                           "or into an excluded directory (.venv, node_modules, .git ...) to start faster")

    def _members(self) -> Iterator[tuple[Path, str]]:
        skip = [self.work_dir, *self.exclude]
        for path in iter_tree(self.project_dir, skip):
            rel = path.relative_to(self.project_dir).as_posix()
            yield path, "project" if rel == "." else f"project/{rel}"
        package = package_parent() / PACKAGE
        for path in iter_tree(package):
            rel = path.relative_to(package).as_posix()
            yield path, f"agent/{PACKAGE}" if rel == "." else f"agent/{PACKAGE}/{rel}"

    def _stream_tar(self, command: str) -> tuple[int, int]:
        if shutil.which(self.ssh_binary) is None:
            raise EnvironmentFailure(self.name, f"no ssh client ({self.ssh_binary!r} is not on PATH)",
                                     hint="apt-get install openssh-client")
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                self.ssh_argv(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True)
            assert process.stdin is not None
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                process.kill()

            timer = threading.Timer(self.ship_timeout, expire)
            timer.daemon = True
            timer.start()
            counter = _CountingWriter(process.stdin)
            files = 0
            broken: Exception | None = None
            try:
                with tarfile.open(fileobj=counter, mode="w|") as archive:  # type: ignore[call-overload]
                    for path, arcname in self._members():
                        archive.add(str(path), arcname, recursive=False, filter=_normalize)
                        if path.is_symlink() or not path.is_dir():
                            files += 1
                    mount = tarfile.TarInfo("hostperf-dir")
                    mount.type, mount.mode, mount.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                    archive.addfile(mount)
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
        if timed_out.is_set():
            raise EnvironmentFailure(self.name, f"copying the project to {self.host} took longer than "
                                                f"{self.ship_timeout:.0f} s", log_tail=_last_lines(stderr),
                                     hint="make the project smaller (data out of the project dir) "
                                          "or the connection faster")
        if code == 255:
            raise self._connection_failure(stderr)
        if code != 0 or broken is not None:
            raise EnvironmentFailure(
                self.name, f"copying the project to {self.host} failed (ssh exit code {code}"
                           + (f", {broken}" if broken else "") + ")",
                hint="the target needs a writable home directory with free space and tar",
                log_tail=_last_lines(stderr))
        return counter.written, files

    def _kill_remote(self) -> None:
        """SIGKILL what is left of this environment's agent on the target (best effort)."""
        self._ssh(shell_command(self.remote_python(), "-c", _KILLER, TOKEN_VAR, self._token,
                                self.remote_work_dir()), timeout=20)
