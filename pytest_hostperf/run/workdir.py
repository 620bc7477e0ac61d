"""The session's private work directory (``$TMPDIR/hostperf-<session>-*``), and its sweep.

Backends keep agent logs, VM disks and mount directories there. It is removed at the
end of the session; a SIGKILLed session cannot do that, so each new session removes the
directories whose owner is gone. Ownership is the one every temp dir of hostperf uses
(:mod:`pytest_hostperf.environments.labels`: an owner file with pid, process start time,
boot id and pid namespace, so a recycled pid is a different process).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pytest_hostperf.environments import labels

PREFIX = labels.TEMP_PREFIX
OWNER_FILE = labels.OWNER_FILE


def create(session_id: str) -> Path:
    """A fresh 0700 directory for the session, with its owner recorded."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{session_id}-"))  # mkdtemp makes it 0700
    labels.write_owner_file(path, session_id)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove this user's ``hostperf-*`` temp directories whose session is gone; return them."""
    return labels.sweep_temp_dirs(root)
