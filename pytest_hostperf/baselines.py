"""Baselines on disk: versioned JSON, one file per (environment, fingerprint). Pure.

Layout: ``<dir>/<env>-<fingerprint id>.json``. A file holds, per test and mount, a
bounded history of saved sessions (median, within-session spread and a thinned set of
raw samples), so between-session noise can be estimated and old samples re-analysed.
Files are written sorted and indented (scalar lists on one line) so a diff reads well,
atomically (temp file + rename) and under an exclusive lock on the directory, so two
processes saving at once both land. A file that cannot be read is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pytest_hostperf.sampling import thin
from pytest_hostperf.stats import SessionSummary

SCHEMA_VERSION = 1
TOOL = "pytest-hostperf"
#: Raw samples kept per saved session: plenty to re-estimate a median, bounded file size.
SAMPLES_KEPT = 200
DEFAULT_HISTORY = 10

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


class BaselineError(Exception):
    """A baseline file is unusable; the message names the file, the problem and the fix."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"baseline file {path}: {problem}. {fix}")


@dataclasses.dataclass(frozen=True)
class SavedSession:
    session_id: str
    saved_at: str
    median_s: float
    log_median_se: float
    rounds: int
    iterations: int
    samples: tuple[float, ...]
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> SessionSummary:
        return SessionSummary(self.median_s, self.log_median_se, self.rounds)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["samples"] = [float(f"{x:.6g}") for x in self.samples]
        data["context"] = dict(self.context)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SavedSession":
        return cls(
            session_id=str(data["session_id"]),
            saved_at=str(data["saved_at"]),
            median_s=float(data["median_s"]),
            log_median_se=float(data["log_median_se"]),
            rounds=int(data["rounds"]),
            iterations=int(data.get("iterations", 1)),
            samples=tuple(float(x) for x in data.get("samples", ())),
            context=dict(data.get("context", {})),
        )


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One result to save: test, mount, and what this session measured."""

    test: str
    mount: str
    summary: SessionSummary
    iterations: int
    samples: Sequence[float]
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BaselineFile:
    path: Path
    environment: str
    fingerprint_id: str
    match: dict[str, Any]
    fingerprint: dict[str, Any]
    benchmarks: dict[str, dict[str, list[SavedSession]]]

    def history(self, test: str, mount: str) -> list[SavedSession]:
        return list(self.benchmarks.get(test, {}).get(mount, []))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": TOOL,
            "environment": self.environment,
            "fingerprint_id": self.fingerprint_id,
            "match": self.match,
            "fingerprint": self.fingerprint,
            "benchmarks": {
                test: {mount: [s.to_json() for s in sessions] for mount, sessions in mounts.items()}
                for test, mounts in self.benchmarks.items()
            },
        }


class BaselineStore:
    """The ``baselines/`` directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path_for(self, environment: str, fingerprint_id: str) -> Path:
        return self.directory / f"{_SLUG.sub('_', environment)}-{fingerprint_id}.json"

    def load(self, environment: str, fingerprint_id: str) -> BaselineFile | None:
        path = self.path_for(environment, fingerprint_id)
        if not path.exists():
            return None
        return read_baseline(path)

    def files_for(self, environment: str) -> list[Path]:
        """Baselines of this environment for any fingerprint (to explain a mismatch)."""
        if not self.directory.is_dir():
            return []
        name = re.compile(re.escape(_SLUG.sub("_", environment)) + r"-[0-9a-f]{12}\.json")
        return sorted(p for p in self.directory.glob("*.json") if name.fullmatch(p.name))

    def save(
        self,
        environment: str,
        fingerprint_id: str,
        match: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
        measurements: Sequence[Measurement],
        session_id: str,
        max_history: int = DEFAULT_HISTORY,
        now: _dt.datetime | None = None,
    ) -> Path:
        """Append this session to the file's history (read-merge-write under a lock)."""
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(environment, fingerprint_id)
        stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
        with _directory_lock(self.directory):
            # Read under the lock: a corrupt file raises here and is left untouched.
            current = read_baseline(path) if path.exists() else BaselineFile(
                path, environment, fingerprint_id, dict(match), {}, {})
            if current.fingerprint_id != fingerprint_id or current.environment != environment:
                raise BaselineError(path, f"holds {current.environment}/{current.fingerprint_id}, "
                                          f"not {environment}/{fingerprint_id}",
                                    "it was renamed by hand; restore its original name or move it away")
            current.fingerprint = dict(fingerprint)
            current.match = dict(match)
            for m in measurements:
                if not all(math.isfinite(x) and x > 0 for x in m.samples):
                    raise ValueError(f"{m.test} [{m.mount}]: samples must be positive finite timings")
                sessions = current.benchmarks.setdefault(m.test, {}).setdefault(m.mount, [])
                sessions[:] = [s for s in sessions if s.session_id != session_id]
                sessions.append(SavedSession(session_id, stamp, m.summary.median_s, m.summary.log_median_se,
                                             m.summary.rounds, m.iterations, tuple(thin(m.samples, SAMPLES_KEPT)),
                                             dict(m.context)))
                del sessions[:-max_history]
            _atomic_write(path, dumps(current.to_json()))
        return path


def read_baseline(path: Path) -> BaselineFile:
    """Parse and validate one baseline file; every problem is a :class:`BaselineError`."""
    fix = (f"restore it (git checkout -- {path}) or move it away to start a new baseline; "
           "hostperf never overwrites a file it cannot read")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(path, f"cannot be read ({exc})", fix) from exc
    except json.JSONDecodeError as exc:
        raise BaselineError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", fix) from exc
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise BaselineError(path, "is not a pytest-hostperf baseline (no \"tool\": \"pytest-hostperf\")",
                            "keep other tools' files out of the baselines directory or point "
                            "--hostperf-baselines elsewhere")
    version = data.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise BaselineError(path, f"has schema_version {version!r}; this pytest-hostperf reads {SCHEMA_VERSION}",
                            "use the pytest-hostperf version that wrote it, or re-save the baseline "
                            "with --hostperf-save after moving this file away")
    try:
        benchmarks = {
            str(test): {str(mount): [SavedSession.from_json(s) for s in sessions]
                        for mount, sessions in mounts.items()}
            for test, mounts in data["benchmarks"].items()
        }
        return BaselineFile(path, str(data["environment"]), str(data["fingerprint_id"]),
                            dict(data.get("match", {})), dict(data.get("fingerprint", {})), benchmarks)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BaselineError(path, f"has an unexpected structure ({type(exc).__name__}: {exc})", fix) from exc


def dumps(data: Any) -> str:
    """JSON with sorted keys, two-space indent, and lists of scalars kept on one line."""
    return _format(data, 0) + "\n"


def _format(value: Any, level: int) -> str:
    pad = "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {_format(value[k], level + 1)}" for k in sorted(value, key=str)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return "[" + ", ".join(json.dumps(_finite(v)) for v in value) + "]"
        return "[\n" + ",\n".join(pad + _format(v, level + 1) for v in value) + "\n" + "  " * level + "]"
    return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a missing value is honest
    return value


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a baseline is shared through git like any file.
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    # flock on the directory itself: no lock file to leave behind in a git-tracked folder.
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
