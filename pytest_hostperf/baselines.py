"""Baselines on disk: versioned JSON, one file per (environment, fingerprint). Pure.

Layout: ``<dir>/<env>-<fingerprint id>.json``. A file holds, per test and mount, a
bounded history of saved sessions (median, within-session spread and a thinned set of
raw samples), so between-session noise can be estimated and old samples re-analysed.
Files are written sorted and indented (scalar lists on one line) so a diff reads well,
atomically (temp files + rename, every environment of a session or none) and under an
exclusive lock on the directory, so two processes saving at once both land. A file that
cannot be read, or holds a value no timing can be, is never overwritten.
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
from typing import Any, Callable, Iterator, Mapping, Sequence

from pytest_hostperf.model import Record, RecordError, SessionSummary, count, non_negative, positive
from pytest_hostperf.sampling import thin

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
    """One saved session of one test and mount: the unit of the between-session history."""

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

    def reference(self) -> SessionSummary | None:
        """The host's reference workload as timed beside this session, if it was."""
        data = self.context.get("reference")
        return SessionSummary.from_json(data) if isinstance(data, Mapping) else None

    @classmethod
    def from_record(cls, record: Record, session_id: str, saved_at: str) -> SavedSession:
        """What a measured record leaves in the history: summary, thinned samples, context."""
        if record.summary is None or not record.samples:
            raise ValueError(f"{record.test} [{record.mount_key}]: nothing measured to save")
        if not all(math.isfinite(x) and x > 0 for x in record.samples):
            raise ValueError(f"{record.test} [{record.mount_key}]: samples must be positive finite timings")
        context: dict[str, Any] = {}
        if record.fstype:
            context["fstype"] = record.fstype
        if record.mount_signature and record.mount_signature != record.fstype:
            context["mount"] = record.mount_signature
        if record.references:
            context["reference"] = record.references[0].to_json()
        if record.accepted is not None:
            context["accepted"] = {"reason": record.accepted,
                                   "verdict": record.verdict.value if record.verdict else None}
        summary = record.summary
        return cls(session_id, saved_at, summary.median_s, summary.log_median_se, summary.rounds,
                   record.iterations, tuple(thin(record.samples, SAMPLES_KEPT)), context)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["samples"] = [float(f"{x:.6g}") for x in self.samples]
        data["context"] = dict(self.context)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "session") -> SavedSession:
        """Read one history entry; a value no timing can be is a :class:`RecordError` naming it.

        Hand-edited files are the reason: a NaN median turns a 2x regression into a pass
        and a zero one divides by zero, so neither may reach the statistics.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected an object")
        context = data.get("context", {})
        if not isinstance(context, Mapping):
            raise RecordError(f"{where}.context: expected an object")
        if "reference" in context:
            SessionSummary.from_json(context["reference"], f"{where}.context.reference")
        return cls(
            session_id=str(data["session_id"]),
            saved_at=str(data["saved_at"]),
            median_s=positive(data.get("median_s"), f"{where}.median_s"),
            log_median_se=non_negative(data.get("log_median_se"), f"{where}.log_median_se"),
            rounds=count(data.get("rounds"), f"{where}.rounds"),
            iterations=count(data.get("iterations", 1), f"{where}.iterations"),
            samples=tuple(positive(x, f"{where}.samples[{i}]") for i, x in enumerate(_samples(data, where))),
            context=dict(context),
        )


def _samples(data: Mapping[str, Any], where: str) -> list[Any]:
    samples = data.get("samples", [])
    if not isinstance(samples, list):   # a string would otherwise be read letter by letter
        raise RecordError(f"{where}.samples is {samples!r:.60}; expected a list of numbers")
    return samples


@dataclasses.dataclass(frozen=True)
class EnvironmentSave:
    """What one environment saves at the end of a session: its identity and its records."""

    environment: str
    fingerprint_id: str
    match: Mapping[str, Any]
    fingerprint: Mapping[str, Any]
    records: Sequence[Record]


class BaselineSaveError(OSError):
    """Saving failed (read-only directory, full disk); no baseline file was changed."""

    def __init__(self, directory: Path, problem: str) -> None:
        self.directory = directory
        super().__init__(f"baselines NOT saved to {directory}: {problem}. No baseline file was changed; "
                         "free space or fix the directory's permissions, then run the session again "
                         "with --hostperf-save")


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
        records: Sequence[Record],
        session_id: str,
        max_history: int = DEFAULT_HISTORY,
        now: _dt.datetime | None = None,
    ) -> Path:
        """Append this session to one environment's file (see :meth:`save_all`)."""
        (path,) = self.save_all([EnvironmentSave(environment, fingerprint_id, match, fingerprint, records)],
                                session_id, max_history, now)
        return path

    def save_all(self, saves: Sequence[EnvironmentSave], session_id: str, max_history: int = DEFAULT_HISTORY,
                 now: _dt.datetime | None = None) -> list[Path]:
        """Append this session to every environment's file: all of them or none.

        Under the directory lock every file is read (an unreadable one raises
        :class:`BaselineError` and nothing is written), every new text is written to a
        temporary file beside its target and synced, and only then are they renamed
        over the targets. A full disk or a read-only directory fails while staging and
        leaves every file as it was (:class:`BaselineSaveError`).
        """
        if max_history < 1:
            raise ValueError("max_history must be at least 1")

        def texts(stamp: str) -> dict[Path, str]:
            paths = [(self.path_for(save.environment, save.fingerprint_id), save) for save in saves]
            return {path: dumps(self._merged(path, save, session_id, stamp, max_history).to_json())
                    for path, save in paths}

        return write_locked(self.directory, texts, now)

    def _merged(self, path: Path, save: EnvironmentSave, session_id: str, stamp: str,
                max_history: int) -> BaselineFile:
        # Read under the lock: a corrupt file raises here and is left untouched.
        current = read_baseline(path) if path.exists() else BaselineFile(
            path, save.environment, save.fingerprint_id, dict(save.match), {}, {})
        if current.fingerprint_id != save.fingerprint_id or current.environment != save.environment:
            raise BaselineError(path, f"holds {current.environment}/{current.fingerprint_id}, "
                                      f"not {save.environment}/{save.fingerprint_id}",
                                "it was renamed by hand; restore its original name or move it away")
        current.fingerprint = dict(save.fingerprint)
        current.match = dict(save.match)
        for record in save.records:
            sessions = current.benchmarks.setdefault(record.test, {}).setdefault(record.mount_key, [])
            sessions[:] = [s for s in sessions if s.session_id != session_id]
            sessions.append(SavedSession.from_record(record, session_id, stamp))
            del sessions[:-max_history]
        return current


def read_json_file(path: Path, instead: str) -> Any:
    """The JSON in a file under the baselines directory; a :class:`BaselineError` if unreadable.

    ``instead``: what moving the file away lets the user do ("start a new baseline").
    """
    fix = f"restore it (git checkout -- {path}) or move it away to {instead}; hostperf never overwrites a file " \
          "it cannot read"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(path, f"cannot be read ({exc})", fix) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        conflict = _conflict_marker_line(text)
        if conflict:
            # A merge of two branches that both saved: the JSON error alone would hide why.
            raise BaselineError(path, f"has unresolved git merge-conflict markers (line {conflict})",
                                f"keep one side (git checkout --theirs -- {path}, or --ours) and save again, "
                                "or merge the two histories by hand; hostperf never overwrites a file it "
                                "cannot read") from exc
        raise BaselineError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", fix) from exc
    return data


def read_baseline(path: Path) -> BaselineFile:
    """Parse and validate one baseline file; every problem is a :class:`BaselineError`."""
    data = read_json_file(path, "start a new baseline")
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
            str(test): {str(mount): [SavedSession.from_json(s, f"benchmarks[{test!r}][{mount!r}][{i}]")
                                     for i, s in enumerate(_kind(sessions, list, f"benchmarks[{test!r}][{mount!r}]"))]
                        for mount, sessions in _kind(mounts, dict, f"benchmarks[{test!r}]").items()}
            for test, mounts in _kind(data["benchmarks"], dict, "benchmarks").items()
        }
        return BaselineFile(path, str(data["environment"]), str(data["fingerprint_id"]),
                            dict(data.get("match", {})), dict(data.get("fingerprint", {})), benchmarks)
    except RecordError as exc:
        raise BaselineError(path, f"holds an impossible value: {exc}",
                            f"correct the hand edit or restore the file (git checkout -- {path}); "
                            "hostperf never overwrites a file it cannot read") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BaselineError(path, f"has an unexpected structure ({type(exc).__name__}: {exc})",
                            f"restore it (git checkout -- {path}) or move it away to start a new baseline; "
                            "hostperf never overwrites a file it cannot read") from exc


def _conflict_marker_line(text: str) -> int | None:
    """The line number of the first git conflict marker in ``text``, if any."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
            return number
    return None


def _kind(value: Any, expected: type[Any], where: str) -> Any:
    """``value`` if it is a ``expected`` (dict or list), else a :class:`RecordError` naming ``where``."""
    if not isinstance(value, expected):
        names: dict[type[Any], str] = {dict: "an object", list: "a list"}
        raise RecordError(f"{where} is {names.get(type(value), type(value).__name__)}; expected {names[expected]}")
    return value


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


def _replace_all(directory: Path, texts: Mapping[Path, str]) -> None:
    """Stage every text in a synced temporary file, then rename them all over their targets."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in texts.items():
            staged.append((_stage(path, text), path))
    except BaseException as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise BaselineSaveError(directory, f"{type(exc).__name__}: {exc}") from exc
        raise
    # Renames within one directory allocate no space: once everything is staged, it lands
    # (a rename failing anyway, which needs a fault of the filesystem, leaves no temp file).
    for index, (tmp, path) in enumerate(staged):
        try:
            os.replace(tmp, path)
        except OSError as exc:
            for left, _ in staged[index:]:
                with contextlib.suppress(OSError):
                    os.unlink(left)
            raise BaselineSaveError(directory, f"renaming {path.name} failed ({exc})") from exc


def _stage(path: Path, text: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a baseline is shared through git like any file.
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


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


def write_locked(directory: Path, texts: Callable[[str], Mapping[Path, str]],
                 now: _dt.datetime | None = None) -> list[Path]:
    """Write the files ``texts(timestamp)`` names in ``directory``, all or none, under its lock.

    ``texts`` runs under the lock, so what it reads (the current files) nobody changes
    before the write; a :class:`BaselineError` it raises leaves every file as it was.
    """
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BaselineSaveError(directory, f"cannot create the directory ({exc})") from exc
    with _directory_lock(directory):
        staged = texts(stamp)
        _replace_all(directory, staged)
    return list(staged)
