"""The session's private work directory (``$TMPDIR/hostperf-<session>-*``), and its sweep.

Backends keep agent logs, VM disks and mount directories there. It is removed at the
end of the session; a SIGKILLed session cannot do that, so each new session removes the
directories whose owner process is gone (an ``owner`` file records its pid and start time:
a recycled pid is a different process).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pytest_hostperf.environments.base import session_alive

PREFIX = "hostperf-"
OWNER_FILE = "owner.json"


def create(session_id: str) -> Path:
    """A fresh 0700 directory for the session, with its owner recorded."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{session_id}-"))  # mkdtemp makes it 0700
    (path / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "started": process_start(os.getpid())}),
                                   encoding="utf-8")
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove this user's work directories whose session is no longer running; return them."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{PREFIX}*-*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
            pid, started = int(owner["pid"]), owner.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or still being created: leave it
        if session_alive(pid) and (started is None or process_start(pid) == started):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a recycled pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
