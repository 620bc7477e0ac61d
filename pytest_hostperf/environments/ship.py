"""What of a project travels to an environment that cannot see the host's disk.

An ssh target gets a tar stream, a VM without a shared filesystem a copy on a
read-only disk; both ship the same thing, decided here once: the project without its
VCS data, caches, virtualenvs and build debris, and the ``pytest_hostperf`` package
(only the package: its parent may be a whole site-packages). The layout is the same
everywhere: ``project/...`` and ``agent/pytest_hostperf/...``.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import IO, Final, Iterable, Iterator, Mapping, Sequence

from pytest_hostperf.environments.base import package_parent

PACKAGE: Final = "pytest_hostperf"
PROJECT_DIR: Final = "project"
AGENT_DIR: Final = "agent"

#: Directory names never shipped: VCS data, caches, virtualenvs, build debris.
EXCLUDED_DIRS: Final = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".benchmarks", ".venv", "venv",
    ".tox", ".nox", ".mypy_cache", ".ruff_cache", ".hypothesis", ".eggs", "node_modules",
})
EXCLUDED_SUFFIXES: Final = (".pyc", ".pyo", ".egg-info")
EXCLUDED_FILES: Final = frozenset({".DS_Store"})


def excluded(name: str, path: Path) -> bool:
    """Whether ``path`` (called ``name``) stays home."""
    if name in EXCLUDED_DIRS or name in EXCLUDED_FILES or name.endswith(EXCLUDED_SUFFIXES):
        return True
    # Any virtualenv, whatever its name.
    return not path.is_symlink() and path.is_dir() and (path / "pyvenv.cfg").is_file()


def iter_tree(root: Path, skip: Sequence[Path] = ()) -> Iterator[Path]:
    """Every directory, file and symlink under ``root`` worth shipping, root first, sorted.

    A symlink to a directory is shipped as the link, not followed; sockets, fifos and
    devices are left out, and so is anything under ``skip``.
    """
    skipped = {p.resolve() for p in skip}
    yield root
    for current, dirnames, filenames in os.walk(root):
        base = Path(current)
        keep = []
        for name in sorted(dirnames):
            path = base / name
            if excluded(name, path) or path.resolve() in skipped:
                continue
            yield path
            if not path.is_symlink():
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = base / name
            if excluded(name, path) or (not path.is_file() and not path.is_symlink()):
                continue
            yield path


def members(project_dir: Path, skip: Sequence[Path] = ()) -> Iterator[tuple[Path, str]]:
    """(local path, relative name in the shipment) for the project and the agent package."""
    for path in iter_tree(project_dir, skip):
        rel = path.relative_to(project_dir).as_posix()
        yield path, PROJECT_DIR if rel == "." else f"{PROJECT_DIR}/{rel}"
    package = package_parent() / PACKAGE
    for path in iter_tree(package):
        rel = path.relative_to(package).as_posix()
        yield path, f"{AGENT_DIR}/{PACKAGE}" if rel == "." else f"{AGENT_DIR}/{PACKAGE}/{rel}"


class _CountingWriter:
    """A write-only file object that counts what passes (a tar stream's target)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.written = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.written += len(data)
        return len(data)


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The local owner means nothing on the target: files belong to whoever extracts.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(target: IO[bytes], shipment: Iterable[tuple[Path, str]], empty_dirs: Sequence[str] = (),
              extra_files: Mapping[str, bytes] | None = None) -> tuple[int, int]:
    """Stream ``shipment`` as an uncompressed tar into ``target``; return (bytes, files).

    ``empty_dirs`` and ``extra_files`` (name -> content) are added at the top of it.
    """
    counter = _CountingWriter(target)
    files = 0
    with tarfile.open(fileobj=counter, mode="w|") as archive:  # type: ignore[call-overload]
        for path, arcname in shipment:
            archive.add(str(path), arcname, recursive=False, filter=_normalize)
            if path.is_symlink() or not path.is_dir():
                files += 1
        for name in empty_dirs:
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            archive.addfile(entry)
        for name, content in (extra_files or {}).items():
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode, entry.mtime = len(content), 0o600, int(time.time())
            archive.addfile(entry, io.BytesIO(content))
    return counter.written, files


def copy_to(dest: Path, shipment: Iterable[tuple[Path, str]]) -> int:
    """Copy ``shipment`` into the directory ``dest`` (symlinks as links); return the files copied."""
    files = 0
    for path, relname in shipment:
        target = dest / relname
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(path), target)
            files += 1
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            files += 1
    return files


def human_size(size: float) -> str:
    """``1.5 MB`` style: for progress lines and prune listings."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
