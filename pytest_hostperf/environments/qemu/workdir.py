"""Where a VM's files live while it runs, and removing what a killed session left.

Each VM gets ``<root>/<session id>/`` (overlay disk, sockets, console and qemu logs,
pidfile, ``owner.json``). The root is per user (``pytest-hostperf-qemu-<uid>`` in the
temp dir) and private: created 0700, and refused when it is a symlink, owned by
someone else, or writable by others, since whoever can write there could plant an
``owner.json`` or swap a socket. Unix socket paths must stay under 108 bytes, hence a
short root and short session ids.

:func:`sweep_stale` trusts nothing it reads there: the session id must be well-formed
and equal the directory's name, the owner must be provably gone, and a process is
killed only when it runs as this user and its arguments are exactly those of that
session's qemu (``-name hostperf-<id>,...``) or virtiofsd (a socket in that directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final, Iterable, Optional

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.labels import Liveness
from pytest_hostperf.environments.process import command_line, process_uid
from pytest_hostperf.environments.qemu.shares import release_mounts

OWNER_FILE: Final = "owner.json"
ENV_NAME: Final = "qemu"


def session_root(base: Optional[Path] = None) -> Path:
    """This user's private directory for VM work dirs (not created here)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(base or tempfile.gettempdir()) / f"pytest-hostperf-qemu-{uid}"


def ensure_private_root(root: Optional[Path] = None) -> Path:
    """Create the root 0700 if missing; EnvironmentFailure when it is not safe to use."""
    return labels.ensure_private_dir(root or session_root(), ENV_NAME)


def make_workdir(session_id: str, root: Optional[Path] = None) -> Path:
    """A fresh private work dir for one VM of ``session_id``, with its owner recorded."""
    workdir = ensure_private_root(root) / session_id
    workdir.mkdir(mode=0o700)
    labels.write_owner_file(workdir, session_id, OWNER_FILE, created=time.time())
    return workdir


def record_helpers(workdir: Path, session_id: str, pids: Iterable[int]) -> None:
    """Add the helper processes (virtiofsd) to the owner record, for the sweep."""
    labels.write_owner_file(workdir, session_id, OWNER_FILE, created=time.time(), helpers=list(pids))


def sweep_stale(root: Optional[Path] = None) -> list[Path]:
    """Kill qemu/virtiofsd left by dead sessions and remove their work dirs; return them.

    With the default root, the NFS servers of dead sessions (the ``share-nfs`` and
    ``bind-nfs`` mounts, :func:`pytest_hostperf.environments.nfs.sweep_stale`) go too,
    and their state dirs are among the paths returned.
    """
    removed: list[Path] = []
    if root is None:
        from pytest_hostperf.environments import nfs

        removed += nfs.sweep_stale()
    root = root or session_root()
    try:
        if labels.unsafe_reason(root.lstat()):
            return removed   # not ours to clean: ensure_private_root() refuses it with the reason
        entries = list(root.iterdir())
    except OSError:
        return removed
    here = labels.Owner.current()
    for workdir in entries:
        if workdir.is_symlink() or not workdir.is_dir():
            continue
        record = labels.read_owner_file(workdir / OWNER_FILE)
        if record is None:
            # No (valid) owner file: a dir being created, or debris; only old ones go.
            try:
                if time.time() - workdir.stat().st_mtime < 60 or not labels.valid_session_id(workdir.name):
                    continue
            except OSError:
                continue
            session, helpers = workdir.name, []
        else:
            session, owner, data = record
            if session != workdir.name or owner.liveness(here) not in (Liveness.DEAD, Liveness.OTHER_BOOT):
                continue
            helpers = [p for p in data.get("helpers", []) if isinstance(p, int)]
        kill_session_processes(session, workdir, helpers)
        release_mounts(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def kill_session_processes(session: str, workdir: Path, helpers: Iterable[int] = ()) -> list[int]:
    """SIGKILL this user's qemu and virtiofsd of ``session``; return their pids."""
    import psutil

    candidates = set(helpers)
    try:
        candidates.add(int((workdir / "qemu.pid").read_text().strip()))
    except (OSError, ValueError):
        pass
    candidates.update(proc.pid for proc in psutil.process_iter())
    uid = os.getuid() if hasattr(os, "getuid") else None
    victims = []
    for pid in candidates:
        if pid in (os.getpid(), os.getppid()) or (uid is not None and process_uid(pid) != uid):
            continue
        argv = command_line(pid)
        if argv and belongs_to_session(argv, session, workdir):
            victims.append(pid)
    processes = []
    for pid in victims:
        try:
            process = psutil.Process(pid)
            process.kill()
            processes.append(process)
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=5)
    return victims


def belongs_to_session(argv: list[str], session: str, workdir: Path) -> bool:
    """Whether ``argv`` is exactly this session's qemu, or a virtiofsd serving its work dir."""
    name = f"hostperf-{session}"
    if "-name" in argv:
        index = argv.index("-name")
        value = argv[index + 1] if index + 1 < len(argv) else ""
        return value in (name, f"{name},process={name}")
    sockets = [a.split("=", 1)[1] for a in argv if a.startswith("--socket-path=")]
    return any(Path(s).parent == workdir for s in sockets)
