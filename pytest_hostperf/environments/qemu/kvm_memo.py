"""What KVM did on this machine since it last booted, remembered for later VMs and the doctor.

A VM's boot tries KVM first and gives it up within ~5 s when it runs nothing (nested KVM
on our CI machines: /dev/kvm is there, the guest never writes a word). That answer holds
until the machine reboots, so it is kept per boot id and qemu binary: later VMs of this
boot go straight to TCG (every VM of a session, and every session, saved the probe) and
``hostperf doctor`` reports what will run instead of guessing from /dev/kvm. A reboot,
another qemu binary or a KVM that worked makes it ask again. Best effort: a cache that
cannot be read or written only means the probe runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from pytest_hostperf.environments.labels import boot_id


@dataclasses.dataclass(frozen=True)
class KvmOutcome:
    works: bool
    reason: str = ""     # why it failed
    at: str = ""         # when it was learned (UTC)


def memo_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-hostperf" / "kvm"


def _memo_file(directory: Optional[Path] = None) -> Optional[Path]:
    booted = boot_id()
    return (directory or memo_dir()) / f"{booted}.json" if booted else None


def recall(binary: str, directory: Optional[Path] = None) -> Optional[KvmOutcome]:
    """What KVM did with ``binary`` since this machine booted; None when it was not tried."""
    path = _memo_file(directory)
    try:
        entry = json.loads(path.read_text())[binary] if path else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("works"), bool):
        return None
    return KvmOutcome(entry["works"], str(entry.get("reason") or ""), str(entry.get("at") or ""))


def remember(binary: str, outcome: KvmOutcome, directory: Optional[Path] = None) -> None:
    """Keep ``outcome`` for ``binary`` until the machine reboots (atomic replace; errors ignored)."""
    path = _memo_file(directory)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
        known[binary] = {"works": outcome.works, "reason": outcome.reason,
                         "at": outcome.at or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".kvm-")
        with os.fdopen(handle, "w") as out:
            json.dump(known, out)
        os.replace(temp, path)
    except OSError:
        pass
