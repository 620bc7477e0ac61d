"""The fault-injection suite's kit: run a session, snapshot the baselines, list what it left.

Every fault test asserts three things: what the user sees (exit code, the item's text),
that no saved baseline byte was lost (:class:`BaselineSnapshot`) and that nothing was
left behind (:func:`leftovers`). Other engineers' hostperf sessions run on this machine
at the same time, so :func:`leftovers` looks only at what the session under test made:

* containers and volumes labelled with its controller's pid (we start the controller,
  so we know the pid), in every engine the test names;
* processes that carry the run's marker in their environment (every local child of the
  controller inherits it: agents, qemu, virtiofsd, ganesha, ssh clients), and for ssh
  the processes our private sshd still runs;
* mounts under the project's root (a virtiofs share is a bind mount on the host);
* files in the session's private ``TMPDIR`` (work dirs, VM dirs, bind-mount dirs) and
  its copies on an ssh target (``~/.cache/pytest-hostperf/*/owner.json`` naming it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import psutil
import pytest
from sessions import FAST

from pytest_hostperf.environments import labels as owner_labels

#: Environment variable that marks every local process a session under test starts.
MARKER_VAR = "HOSTPERF_FAULT_RUN"
#: The per-user VM root a session creates in its TMPDIR: kept (empty) like /tmp/pytest-of-<user>.
_USER_ROOTS = (f"pytest-hostperf-qemu-{os.getuid()}",)


@dataclasses.dataclass(frozen=True)
class SessionResult:
    """A finished ``pytest --hostperf`` session: exit code, output, the controller's pid."""

    ret: int
    output: str
    pid: int
    elapsed_s: float

    @property
    def lines(self) -> pytest.LineMatcher:
        return pytest.LineMatcher(self.output.splitlines())

    def item_outcomes(self) -> dict[str, str]:
        """``{item id: PASSED|FAILED|ERROR|SKIPPED}`` from the ``-rA`` summary."""
        found = {}
        for line in self.output.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
                found[words[1].split("::", 1)[-1]] = words[0]
        return found

    def failure_text(self, item: str) -> str:
        """The failure section pytest printed for ``item`` (``test_x[docker]``)."""
        header = f" {item} "
        lines = self.output.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("_") and header in line), None)
        if start is None:
            return ""
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("___", "==="))), len(lines))
        return "\n".join(lines[start:end])


class FaultProject:
    """A throwaway project, its private TMPDIR and baselines, and the sessions run on it.

    The TMPDIR is short (``/tmp/hpf-*``): a VM's unix sockets live under it and their
    paths must stay under 108 bytes.
    """

    def __init__(self, root: Path) -> None:
        self.path = root
        root.mkdir(parents=True, exist_ok=True)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="hpf-"))
        self.baselines = root / "baselines"
        self.marker = uuid.uuid4().hex
        self.runs: list[SessionResult] = []
        self.pids: list[int] = []
        (root / "pytest.ini").write_text("[pytest]\n")

    def write(self, name: str, text: str) -> Path:
        path = self.path / name
        path.write_text(text)
        return path

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "TMPDIR": str(self.tmpdir), MARKER_VAR: self.marker, "PY_COLORS": "0"}
        env.pop("PYTEST_ADDOPTS", None)
        env.update(extra or {})
        return env

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A session in the background (output to a file); :meth:`finish` waits for it."""
        log = open(self.path / f"session-{len(self.pids)}.log", "wb")  # noqa: SIM115 - closed by finish()
        process = subprocess.Popen([sys.executable, "-m", "pytest", *FAST, "-rA", "--hostperf", *args],
                                   cwd=self.path, env=self.environ(env), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        process.log = log  # type: ignore[attr-defined]
        self.pids.append(process.pid)
        return process

    def finish(self, process: subprocess.Popen[bytes], started: float, timeout: float) -> SessionResult:
        try:
            ret = process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)   # its own session: the controller and its agents
            process.wait()
            pytest.fail(f"the session hung for {timeout:.0f} s:\n{Path(process.log.name).read_text()[-6000:]}")
        finally:
            process.log.close()  # type: ignore[attr-defined]
        result = SessionResult(ret, Path(process.log.name).read_text(errors="replace"), process.pid,
                               time.monotonic() - started)
        self.runs.append(result)
        return result

    def run(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> SessionResult:
        """``pytest --hostperf ARGS`` with the short benchmark options, waited for."""
        started = time.monotonic()
        return self.finish(self.start(*args, env=env), started, timeout)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- baselines

@dataclasses.dataclass(frozen=True)
class BaselineSnapshot:
    """The bytes of every file in a baselines directory at one moment."""

    directory: Path
    files: Mapping[str, bytes]

    @classmethod
    def take(cls, directory: Path) -> BaselineSnapshot:
        files = {}
        if directory.is_dir():
            files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
        return cls(directory, files)

    def digest(self) -> str:
        return hashlib.sha256(b"".join(n.encode() + b"\0" + hashlib.sha256(d).digest()
                                       for n, d in sorted(self.files.items()))).hexdigest()

    def changed(self) -> list[str]:
        """Files whose bytes differ now (or are gone)."""
        now = BaselineSnapshot.take(self.directory).files
        return [name for name, data in self.files.items() if now.get(name) != data]

    def lost(self) -> list[str]:
        """What of the snapshot is gone: a file, or a saved session of a test's history.

        A file may change (a save appends sessions), but every session saved before must
        still be in it, byte for byte as JSON; a file that was not JSON must be unchanged.
        """
        problems = []
        now = BaselineSnapshot.take(self.directory).files
        for name, data in self.files.items():
            if name not in now:
                problems.append(f"{name}: the file is gone")
            elif now[name] != data:
                problems += [f"{name}: {what}" for what in _lost_sessions(data, now[name])]
        return problems


def _lost_sessions(before: bytes, after: bytes) -> list[str]:
    try:
        old = json.loads(before)
    except ValueError:
        return ["an unreadable file was rewritten"]
    try:
        new = json.loads(after)
    except ValueError:
        return ["a readable file is unreadable now"]
    missing = []
    for test, mounts in old.get("benchmarks", {}).items():
        for mount, history in mounts.items():
            kept = new.get("benchmarks", {}).get(test, {}).get(mount, [])
            missing += [f"{test} [{mount}]: saved session {s.get('session_id')} is gone" for s in history
                        if s not in kept]
    return missing


# --------------------------------------------------------------------------- leftovers

def leftovers(project: FaultProject, engines: Iterable[Any] = (), sshd_pid: int | None = None) -> list[str]:
    """Everything the sessions run on ``project`` left behind; [] when they cleaned up."""
    pids = {str(pid) for pid in project.pids}
    found = []
    for engine in engines:
        found += _labelled(engine, pids)
    found += _marked_processes(project.marker)
    if sshd_pid is not None:
        found += [f"process {p.pid} under our sshd: {' '.join(p.cmdline())[:160]}"
                  for p in _descendants(sshd_pid)]
    found += [f"mount {point}" for point in _mounts_under(project.path) + _mounts_under(project.tmpdir)]
    found += [f"temp {p}" for p in _files_under(project.tmpdir)]
    found += [f"ssh copy {p}" for p in _ssh_copies(pids)]
    return found


def wait_for_no_leftovers(project: FaultProject, timeout: float = 15.0, **kwargs: Any) -> list[str]:
    """:func:`leftovers`, given a moment for processes that are on their way out."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(project, **kwargs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def wait_for_file(root: Path, pattern: str, timeout: float = 180) -> Path:
    """The first file matching ``pattern`` under ``root`` (a test body's "I am running" sign)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next(root.rglob(pattern), None)
        if found is not None:
            return found
        time.sleep(0.1)
    pytest.fail(f"no {pattern} under {root} within {timeout:.0f} s")


def _labelled(engine: Any, pids: set[str]) -> list[str]:
    label = {"label": owner_labels.PID}
    containers = [f"container {c.name}" for c in engine.containers.list(all=True, filters=label)
                  if c.labels.get(owner_labels.PID) in pids]
    volumes = [f"volume {v.name}" for v in engine.volumes.list(filters=label)
               if (v.attrs.get("Labels") or {}).get(owner_labels.PID) in pids]
    return containers + volumes


def _marked_processes(marker: str) -> list[str]:
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for process in psutil.process_iter(["pid", "status", "cmdline"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(f"process {process.pid}: {' '.join(process.info['cmdline'] or [])[:160]}")
    return found


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.Error:
            continue
    return alive


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def _files_under(root: Path) -> list[Path]:
    if not root.exists():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name in _USER_ROOTS and entry.is_dir() and not any(entry.iterdir()):
            continue
        found.append(entry)
    return found


def _ssh_copies(pids: set[str]) -> list[Path]:
    cache = Path(os.path.expanduser("~/.cache/pytest-hostperf"))
    copies = []
    for owner_file in cache.glob("*/owner.json"):
        record = owner_labels.read_owner_file(owner_file)
        if record is not None and str(record[1].pid) in pids:
            copies.append(owner_file.parent)
    return copies


def item_ids(result: SessionResult, outcome: str) -> list[str]:
    return sorted(item for item, seen in result.item_outcomes().items() if seen == outcome)


def expect(result: SessionResult, outcomes: Mapping[str, str]) -> None:
    """Each named item ended as given (``{"test_x[docker]": "FAILED"}``)."""
    seen = result.item_outcomes()
    wrong = {item: seen.get(item) for item, outcome in outcomes.items() if seen.get(item) != outcome}
    assert not wrong, f"unexpected outcomes {wrong}\n{result.output[-8000:]}"


def agent_restarts(result: SessionResult, env: str) -> int:
    return result.output.count(f"hostperf: {env}: agent restarted")


def failed_lines(result: SessionResult) -> Sequence[str]:
    return [line for line in result.output.splitlines() if line.startswith("FAILED ")]
