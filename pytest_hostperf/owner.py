"""Which process owns a temporary directory, so that a sweep can remove a killed one's.

A directory a session creates gets an ``owner.json`` naming the session's process: its
pid and the time that process started. A pid alone is not enough: after a reboot or a
long day the pid is reused by an unrelated process, and a sweep trusting the pid would
keep the leftovers forever. The start time tells the two apart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

OWNER_FILE = "owner.json"
#: A directory without a readable owner file is left alone this long: its creator may
#: be between making it and writing the file.
UNOWNED_GRACE_SECONDS = 600.0


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if it is gone or a zombie.

    Raises PermissionError when the process exists but may not be inspected.
    """
    import psutil  # a dependency of the plugin; imported here to keep importing this module cheap

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: dead for a sweep
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied as error:
        raise PermissionError(f"process {pid} exists but cannot be inspected") from error


def write_owner(directory: Path, **details: Any) -> None:
    """Record this process as the owner of ``directory`` (atomically), with ``details``."""
    record = {"pid": os.getpid(), "started": process_start_time(os.getpid()), "created": time.time(), **details}
    partial = directory / (OWNER_FILE + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, directory / OWNER_FILE)


def read_owner(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def abandoned(directory: Path, now: float | None = None) -> bool:
    """Whether ``directory``'s owner is dead (or a different process now has its pid).

    Without a readable owner file the directory counts as abandoned once it is older
    than :data:`UNOWNED_GRACE_SECONDS` (its creator was killed before writing it).
    """
    record = read_owner(directory)
    if record is None:
        try:
            age = (now if now is not None else time.time()) - directory.stat().st_mtime
        except OSError:
            return False
        return age > UNOWNED_GRACE_SECONDS
    pid, started = record.get("pid"), record.get("started")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return True
    try:
        running_since = process_start_time(pid)
    except PermissionError:
        return False  # it runs: whoever it is, not ours to judge
    if running_since is None:
        return True
    # Start times are rounded differently by /proc and psutil's boot-time arithmetic.
    return isinstance(started, (int, float)) and abs(running_since - started) > 1.0
