"""Root-relative file access: every read of /proc, /sys and / goes through here.

Like pyperf, the collectors never spell an absolute path: they ask for a path relative
to a ``root`` so the tests can point them at a fake tree in a temporary directory. Every
reader returns None on a missing, unreadable or undecodable file instead of raising,
because the fingerprint is collected in environments we do not control (a container
without /sys, a VM with a restricted /proc) and a missing fact must never cost a run.
"""

from __future__ import annotations

import os
import re
from typing import Final, NamedTuple

# /proc files report size 0, so reads are bounded by this instead of by stat().
_MAX_READ: Final = 1 << 20

_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def is_live(root: str) -> bool:
    """Whether ``root`` is the real filesystem root of this process.

    Facts that come from system calls rather than files (CPU affinity, CPUID, uname)
    are only mixed in for the live root; a fake tree must describe itself alone.
    """
    try:
        return os.path.realpath(root) == os.path.realpath(os.sep)
    except (OSError, ValueError):
        return False


def host_path(root: str, path: str) -> str:
    """The on-disk location of the environment path ``path`` ("/proc/cpuinfo") under ``root``."""
    return os.path.join(root, path.lstrip("/"))


def exists(root: str, path: str) -> bool:
    """Whether ``path`` exists under ``root`` (False on any error)."""
    try:
        return os.path.lexists(host_path(root, path))
    except (OSError, ValueError):
        return False


def read_text(root: str, path: str) -> str | None:
    """The text of ``path`` under ``root``, or None when it cannot be read."""
    try:
        with open(host_path(root, path), "rb") as handle:
            data = handle.read(_MAX_READ)
    except (OSError, ValueError):
        return None
    # /proc files are ASCII in practice; "replace" keeps an odd byte from hiding the rest.
    return data.decode("utf-8", "replace")


def read_line(root: str, path: str) -> str | None:
    """The first line of ``path`` stripped, or None when missing or empty."""
    text = read_text(root, path)
    if text is None:
        return None
    line = text.strip().split("\n", 1)[0].strip()
    return line or None


def read_int(root: str, path: str) -> int | None:
    """The first line of ``path`` as an int, or None when missing or not a number."""
    line = read_line(root, path)
    if line is None:
        return None
    try:
        return int(line)
    except ValueError:
        return None


def resolve(root: str, path: str) -> str:
    """``path`` with symlinks resolved inside ``root``, as an environment path."""
    try:
        if is_live(root):
            return os.path.realpath(path)
        real_root = os.path.realpath(root)
        real = os.path.realpath(host_path(root, path))
        if real == real_root:
            return "/"
        if real.startswith(real_root.rstrip(os.sep) + os.sep):
            return "/" + os.path.relpath(real, real_root).replace(os.sep, "/")
    except (OSError, ValueError):
        pass
    # A symlink that leaves the fake tree cannot be followed honestly: keep the path.
    return os.path.normpath("/" + path.lstrip("/"))


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes in mount tables (``\\040`` is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


class MountEntry(NamedTuple):
    """One line of a mount table."""

    source: str
    mount_point: str
    fstype: str
    options: str
    root: str  # path inside the mounted filesystem (mountinfo only, else "")


def mount_table(root: str) -> list[MountEntry]:
    """The mounts of this process, in mount order (later entries sit on top).

    ``/proc/self/mountinfo`` is preferred because it also says which directory of the
    source filesystem a bind mount shows (how Docker's /etc/hostname is recognised);
    ``/proc/self/mounts`` and ``/proc/mounts`` are the fallbacks.
    """
    text = read_text(root, "/proc/self/mountinfo")
    if text:
        entries = _parse_mountinfo(text)
        if entries:
            return entries
    for path in ("/proc/self/mounts", "/proc/mounts"):
        text = read_text(root, path)
        if text:
            entries = _parse_mounts(text)
            if entries:
                return entries
    return []


def _parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or not tail:
            continue
        source = unescape(tail[1]) if len(tail) > 1 else ""
        super_options = tail[2] if len(tail) > 2 else ""
        # Per-mount and superblock options, as /proc/mounts shows them, without repeats.
        merged = [opt for opt in (fields[5] + "," + super_options).split(",") if opt]
        options = ",".join(dict.fromkeys(merged))
        entries.append(MountEntry(source, unescape(fields[4]), unescape(tail[0]), unescape(options),
                                  unescape(fields[3])))
    return entries


def _parse_mounts(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        options = fields[3] if len(fields) > 3 else ""
        entries.append(MountEntry(unescape(fields[0]), unescape(fields[1]), unescape(fields[2]), unescape(options), ""))
    return entries


def mount_for(path: str, table: list[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path``: longest mount-point prefix, the last one on ties."""
    best: MountEntry | None = None
    for entry in table:
        point = entry.mount_point.rstrip("/") or "/"
        if not (point == "/" or path == point or path.startswith(point + "/")):
            continue
        # ">=" so a later mount on the same point (which hides the earlier one) wins.
        if best is None or len(point) >= len(best.mount_point.rstrip("/") or "/"):
            best = entry
    return best
