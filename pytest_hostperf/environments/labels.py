"""Who made a resource, and whether its maker is gone: what every sweep decides on.

Everything a session creates (containers, volumes, build leftovers, VM work dirs, the
session's temp dirs, its copy on an ssh target) carries the session id and an
:class:`Owner`: the controller's host name, boot id, pid namespace, pid and the pid's
start time. A sweep removes a resource only when its owner is provably gone:

* another host name: not ours to judge (an engine can be shared by machines);
* another boot of this machine: every process of that boot is gone;
* another pid namespace of this boot (a controller in another container with the same
  host name): its pid means nothing here, so it is left alone;
* otherwise: gone when the pid no longer runs (or is a zombie), or now belongs to a
  process that started at another time (a reused pid).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Final, Iterator, Mapping

from pytest_hostperf.environments.process import process_alive, process_start

#: Label keys (Docker labels; the same names are the keys of owner files).
SESSION: Final = "io.hostperf.session"
PID: Final = "io.hostperf.pid"
HOST: Final = "io.hostperf.host"
BOOT_ID: Final = "io.hostperf.boot-id"
PID_NS: Final = "io.hostperf.pid-ns"
STARTED: Final = "io.hostperf.pid-started"
#: Host side of a container's bind mount, removed with the container by a sweep.
BIND_DIR: Final = "io.hostperf.bind-dir"
#: What a hostperf image is: "base", "project" or "build-temp" (a build's intermediate).
KIND: Final = "io.hostperf.kind"

#: A session id as hostperf makes them (hex) or a caller passes them: a name that is
#: safe in a path, a qemu ``-name`` and a Docker label, and never an option.
SESSION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Marks a directory a session owns (its temp dirs), beside its contents.
OWNER_FILE: Final = ".hostperf-owner.json"
#: Prefix of the directories a session claims under the system temp dir.
TEMP_PREFIX: Final = "hostperf-"

_BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")


class Liveness(enum.Enum):
    """What a sweep can tell about a resource's owner."""

    ALIVE = "alive"
    DEAD = "dead"              # same boot and pid namespace, and the process is gone
    OTHER_BOOT = "other-boot"  # made before this machine last booted: its maker is gone
    UNKNOWN = "unknown"        # another host or pid namespace: not ours to judge


def valid_session_id(value: object) -> bool:
    """Whether ``value`` is a well-formed session id (never trust one read from disk blindly)."""
    return isinstance(value, str) and SESSION_ID.fullmatch(value) is not None


def boot_id() -> str | None:
    try:
        return _BOOT_ID_FILE.read_text().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Owner:
    """The controller process that made a resource."""

    pid: int
    host: str
    boot_id: str | None = None
    pid_ns: str | None = None
    started: str | None = None

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(pid, socket.gethostname(), boot_id(), pid_namespace(), process_start(pid))

    def labels(self) -> dict[str, str]:
        """As Docker labels (absent facts are left out)."""
        labels = {PID: str(self.pid), HOST: self.host}
        for key, value in ((BOOT_ID, self.boot_id), (PID_NS, self.pid_ns), (STARTED, self.started)):
            if value:
                labels[key] = value
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, Any]) -> Owner | None:
        """The owner recorded in labels or an owner file; None when they are malformed."""
        pid, host = labels.get(PID), labels.get(HOST)
        if isinstance(pid, int):
            pid = str(pid)
        if not (isinstance(pid, str) and pid.isdigit() and int(pid) > 0 and isinstance(host, str) and host):
            return None
        extra = {name: labels.get(key) for name, key in (("boot_id", BOOT_ID), ("pid_ns", PID_NS),
                                                         ("started", STARTED))}
        return cls(int(pid), host, **{k: v if isinstance(v, str) and v else None for k, v in extra.items()})

    def liveness(self, here: Owner | None = None) -> Liveness:
        """Whether this owner still runs, judged from ``here`` (default: this process)."""
        here = here or Owner.current()
        if self.host != here.host:
            return Liveness.UNKNOWN
        if self.boot_id and here.boot_id and self.boot_id != here.boot_id:
            return Liveness.OTHER_BOOT
        if self.pid_ns and here.pid_ns and self.pid_ns != here.pid_ns:
            return Liveness.UNKNOWN
        if not process_alive(self.pid):
            return Liveness.DEAD
        if self.started and process_start(self.pid) not in (None, self.started):
            return Liveness.DEAD  # the pid now belongs to a younger process
        return Liveness.ALIVE


def owner_labels(session_id: str) -> dict[str, str]:
    """The labels of a resource this session creates now."""
    return {SESSION: session_id, **Owner.current().labels()}


def gone(labels: Mapping[str, Any], here: Owner | None = None) -> bool:
    """Whether the owner recorded in ``labels`` is provably gone (malformed: never)."""
    owner = Owner.from_labels(labels)
    return owner is not None and owner.liveness(here) in (Liveness.DEAD, Liveness.OTHER_BOOT)


# --------------------------------------------------------------------------- owned directories

def write_owner_file(directory: Path, session_id: str, name: str = OWNER_FILE, **extra: Any) -> Path:
    """Record this process as the owner of ``directory`` (replaced atomically)."""
    if not valid_session_id(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    path = directory / name
    data = {SESSION: session_id, **Owner.current().labels(), **extra}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)
    return path


def read_owner_file(path: Path) -> tuple[str, Owner, dict[str, Any]] | None:
    """(session id, owner, the whole record) from an owner file; None unless well-formed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not valid_session_id(data.get(SESSION)):
        return None
    owner = Owner.from_labels(data)
    return (data[SESSION], owner, data) if owner is not None else None


def claim_directory(directory: Path, session_id: str) -> None:
    """Mark a temp dir as this session's, so a sweep removes it once the session is gone."""
    if not (directory / OWNER_FILE).exists():
        write_owner_file(directory, session_id)


@contextlib.contextmanager
def owned_temp_dir(purpose: str, session_id: str = "build") -> Iterator[Path]:
    """A private (0700) ``hostperf-PURPOSE-*`` temp dir, claimed and removed after use.

    Removed when the block ends; if the process is killed first, the owner file lets
    :func:`sweep_temp_dirs` remove it later.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{purpose}-"))
    try:
        write_owner_file(directory, session_id)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sweep_temp_dirs(root: Path | None = None, here: Owner | None = None) -> list[Path]:
    """Remove ``hostperf-*`` temp dirs whose owner file names a process that is gone.

    Directories without an owner file (older versions, or not ours) are left alone, and
    so are those of other users: only directories this user owns are considered.
    """
    removed = []
    for directory in _candidates(Path(root or tempfile.gettempdir())):
        record = read_owner_file(directory / OWNER_FILE)
        if record is None or record[1].liveness(here) not in (Liveness.DEAD, Liveness.OTHER_BOOT):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _candidates(root: Path) -> Iterator[Path]:
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(root.glob(TEMP_PREFIX + "*"))
    except OSError:
        return
    for entry in entries:
        try:
            info = entry.lstat()
        except OSError:
            continue
        if entry.is_dir() and not entry.is_symlink() and (uid is None or info.st_uid == uid):
            yield entry


# --------------------------------------------------------------------------- private roots

def unsafe_reason(info: os.stat_result) -> str:
    """Why a directory with this ``lstat`` is unsafe as a private root ("" when it is fine)."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if info.st_mode & 0o022:
        return f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return ""


def ensure_private_dir(root: Path, env: str) -> Path:
    """Create ``root`` 0700 if missing; EnvironmentFailure naming ``env`` when it is not safe.

    Whoever can write into a root where hostperf keeps owner files, sockets or server
    configs could plant an owner file or swap a socket, so one that is a symlink, owned by
    someone else or writable by others is refused.
    """
    from pytest_hostperf.environments.base import EnvironmentFailure

    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
    except OSError as exc:
        raise EnvironmentFailure(env, f"cannot create the work directory {root}: {exc}",
                                 hint="check the temp directory (TMPDIR) is writable") from None
    problem = unsafe_reason(info)
    if problem:
        uid = os.getuid() if hasattr(os, "getuid") else 0
        raise EnvironmentFailure(
            env, f"refusing to use the work directory {root}: it {problem}",
            hint=f"remove it (or have its owner remove it) and run again; hostperf creates it "
                 f"private (mode 0700, owned by uid {uid})")
    return root
