"""The cache of built VM disks: where it is, how a disk is named, what may be removed.

Each disk lives in ``<cache>/<digest>/`` (``disk.json``, ``disk.img``, ``vmlinuz``...),
named by a digest of the caller's key (an image id), the kernel and the guest files.
A build works in ``<cache>/.build-<digest>-*`` while it holds ``<cache>/.<digest>.lock``;
a build that was killed leaves that staging directory behind, and since the lock dies
with its process, :func:`sweep_build_dirs` can tell such leftovers from a build that runs.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Final, Iterable, Iterator, Optional

from pytest_hostperf.vm.kernel import NETWORK_MODULES, WANTED_MODULES, KernelInfo, find_host_kernel
from pytest_hostperf.vm.model import FORMAT_VERSION, VmDisk, VmImageError, guest_files

BUILD_PREFIX: Final = ".build-"
MANIFEST: Final = "disk.json"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-hostperf/vm`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-hostperf" / "vm"


def guest_files_hash() -> str:
    """Digest of everything the disk builder puts into a guest besides the root filesystem."""
    digest = hashlib.sha256()
    digest.update(str(FORMAT_VERSION).encode())
    for name, source in sorted(guest_files().items()):
        digest.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(repr((WANTED_MODULES, NETWORK_MODULES)).encode())
    return digest.hexdigest()[:16]


def cache_digest(key: str, kernel: Optional[KernelInfo] = None) -> str:
    """Cache directory name: the caller's key + fallback kernel + guest files."""
    if kernel is None:
        try:
            kernel = find_host_kernel()
        except VmImageError:
            kernel = None
    digest = hashlib.sha256()
    digest.update(key.encode())
    digest.update(b"\0" + (f"{kernel.path}:{kernel.version}".encode() if kernel else b"-"))
    digest.update(b"\0" + guest_files_hash().encode())
    return digest.hexdigest()[:20]


def load_cached(cache_dir: Path, key: str, kernel: Optional[KernelInfo] = None) -> Optional[VmDisk]:
    """The cached disk for ``key`` when it was built before, else None."""
    directory = Path(cache_dir) / cache_digest(key, kernel)
    manifest = directory / MANIFEST
    try:
        disk = VmDisk.from_json(directory, json.loads(manifest.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not (disk.path.is_file() and disk.kernel.is_file()):
        return None
    try:
        os.utime(manifest)   # last use, for pruning
    except OSError:
        pass
    return disk


@dataclasses.dataclass(frozen=True)
class CachedDisk:
    """One disk in the cache, for listings and pruning."""

    directory: Path
    key: str              # what it was built from (an image id, ``dir:PATH``...)
    size_bytes: int       # space it really takes (the image is sparse)
    last_used: float      # mtime of its manifest, touched on every use


def cached_disks(cache_dir: Path) -> list[CachedDisk]:
    """Every disk in the cache, most recently used first."""
    found = []
    for manifest in Path(cache_dir).glob(f"*/{MANIFEST}"):
        try:
            key = str(json.loads(manifest.read_text()).get("key", ""))
            found.append(CachedDisk(manifest.parent, key, disk_usage(manifest.parent), manifest.stat().st_mtime))
        except (OSError, ValueError, AttributeError):
            continue
    return sorted(found, key=lambda disk: disk.last_used, reverse=True)


def prune_cache(cache_dir: Path, keep: int = 4, protect: Iterable[Path] = ()) -> list[Path]:
    """Remove all but the ``keep`` most recently used disks; return the removed dirs.

    A running VM is unaffected (qemu keeps its backing file open); ``protect`` names
    directories never to remove.
    """
    protected = {Path(p).resolve() for p in protect}
    removed = []
    for disk in cached_disks(cache_dir)[keep:]:
        if disk.directory.resolve() in protected:
            continue
        shutil.rmtree(disk.directory, ignore_errors=True)
        removed.append(disk.directory)
    return removed


def build_lock(cache_dir: Path, digest: str) -> Path:
    """The file a build of ``digest`` holds an exclusive ``flock`` on while it works."""
    return Path(cache_dir) / f".{digest}.lock"


def sweep_build_dirs(cache_dir: Path, dry_run: bool = False) -> list[Path]:
    """Remove (or with ``dry_run`` only list) staging directories of builds that are gone.

    A staging dir belongs to a live build exactly while its lock is held: a killed build
    released it when it died, so taking the lock without waiting proves it is gone.
    """
    removed = []
    for staging in _staging_dirs(Path(cache_dir)):
        digest = staging.name[len(BUILD_PREFIX):].rsplit("-", 1)[0]
        try:
            with open(build_lock(cache_dir, digest), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not dry_run:
                    shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
        except OSError:  # BlockingIOError: a build of this disk runs right now
            continue
    return removed


def _staging_dirs(cache_dir: Path) -> Iterator[Path]:
    try:
        entries = list(cache_dir.glob(BUILD_PREFIX + "*"))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            yield entry


def disk_usage(path: Path) -> int:
    """Bytes a file or directory tree really occupies (sparse files count what they use)."""
    total = 0
    try:
        entries = [path] if not path.is_dir() else [path, *path.rglob("*")]
        for entry in entries:
            info = entry.lstat()
            total += info.st_blocks * 512 if hasattr(info, "st_blocks") else info.st_size
    except OSError:
        pass
    return total
