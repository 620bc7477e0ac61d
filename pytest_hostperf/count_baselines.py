"""Baselines of instruction counts, keyed by the software fingerprint. Pure: stdlib only.

Layout: ``<baselines>/instructions/<env>-<software id>.json``. The software id
(:func:`pytest_hostperf.agent.count_fingerprint.fingerprint_id`) covers what determines
a count (architecture, interpreter build, libraries, installed packages, valgrind,
environment kind) and nothing of the CPU model, so a file saved on one machine gates
every machine with the same software. Counts repeat exactly, so one saved session is a
baseline; the last :data:`KEPT` are kept per test and mount to show the history.
Written like the time baselines: sorted, atomically, under the directory's lock, and a
file that cannot be read is never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf.baselines import TOOL, BaselineError, dumps, read_json_file, write_locked
from pytest_hostperf.model import RecordError, non_negative, positive

SUBDIRECTORY = "instructions"
KIND = "instructions"
SCHEMA_VERSION = 1
KEPT = 5

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class SavedCount:
    """One session's count of one test: instructions per call and its noise floor."""

    per_call: float
    noise: float
    session_id: str
    saved_at: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> SavedCount:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected an object with per_call and noise")
        return cls(positive(data.get("per_call"), f"{where}.per_call"),
                   non_negative(data.get("noise", 0.0), f"{where}.noise"),
                   str(data.get("session_id") or ""), str(data.get("saved_at") or ""))


@dataclasses.dataclass
class CountFile:
    """One environment's counts for one software fingerprint."""

    path: Path
    environment: str
    software_id: str
    software: dict[str, Any]
    counts: dict[str, dict[str, list[SavedCount]]]   # test -> mount -> oldest first

    def latest(self, test: str, mount: str) -> SavedCount | None:
        history = self.counts.get(test, {}).get(mount) or []
        return history[-1] if history else None

    def to_json(self) -> dict[str, Any]:
        return {"tool": TOOL, "kind": KIND, "schema_version": SCHEMA_VERSION, "environment": self.environment,
                "software_id": self.software_id, "software": self.software,
                "counts": {test: {mount: [c.to_json() for c in history] for mount, history in mounts.items()}
                           for test, mounts in self.counts.items()}}


@dataclasses.dataclass(frozen=True)
class CountSave:
    """What one session saves for one (environment, software): (test, mount, per_call, noise)."""

    environment: str
    software_id: str
    software: Mapping[str, Any]
    entries: Sequence[tuple[str, str, float, float]]


class CountStore:
    """``<baselines>/instructions/``."""

    def __init__(self, baselines_dir: Path | str) -> None:
        self.directory = Path(baselines_dir) / SUBDIRECTORY

    def path_for(self, environment: str, software_id: str) -> Path:
        return self.directory / f"{_SLUG.sub('_', environment)}-{_SLUG.sub('_', software_id)}.json"

    def load(self, environment: str, software_id: str) -> CountFile | None:
        """The file for this software, None when none was saved; raises :class:`BaselineError`."""
        path = self.path_for(environment, software_id)
        return read_counts(path) if path.exists() else None

    def save_all(self, saves: Sequence[CountSave], session_id: str, kept: int = KEPT,
                 now: _dt.datetime | None = None) -> list[Path]:
        """Append this session's counts to every file: all of them or none."""
        if not saves:
            return []

        def texts(stamp: str) -> dict[Path, str]:
            staged = {}
            for save in saves:
                path = self.path_for(save.environment, save.software_id)
                current = read_counts(path) if path.exists() else CountFile(
                    path, save.environment, save.software_id, {}, {})
                current.software = dict(save.software)
                for test, mount, per_call, noise in save.entries:
                    history = current.counts.setdefault(test, {}).setdefault(mount, [])
                    history[:] = [c for c in history if c.session_id != session_id]
                    history.append(SavedCount(per_call, noise, session_id, stamp))
                    del history[:-kept]
                staged[path] = dumps(current.to_json())
            return staged

        return write_locked(self.directory, texts, now)

def read_counts(path: Path) -> CountFile:
    """Parse and validate one count file; every problem is a :class:`BaselineError`."""
    fix = f"move it away to count a new baseline (or restore it: git checkout -- {path})"
    data = read_json_file(path, "count a new baseline")
    if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("kind") != KIND:
        raise BaselineError(path, "is not a pytest-hostperf instruction-count baseline", fix)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(path, f"has schema_version {data.get('schema_version')!r}, this version reads "
                                  f"{SCHEMA_VERSION}", fix)
    try:
        counts = {str(test): {str(mount): [SavedCount.from_json(c, f"{test}[{mount}]") for c in history]
                              for mount, history in dict(mounts).items()}
                  for test, mounts in dict(data.get("counts") or {}).items()}
    except (RecordError, TypeError, ValueError) as exc:
        raise BaselineError(path, f"holds a value no count can be ({exc})", fix) from exc
    return CountFile(path, str(data.get("environment") or ""), str(data.get("software_id") or ""),
                     dict(data.get("software") or {}), counts)
