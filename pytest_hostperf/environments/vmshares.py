"""Command-line pieces and guest mounts for the VM's 9p shares (pure, no I/O).

Destined for ``environments/qemu/shares.py`` when the qemu backend is split; kept
apart until then so the backend and these pieces can change independently.

9p is served by QEMU itself. ``security_model=mapped-xattr``: files the guest
creates belong to QEMU's user on the host with mode 0600/0700, and the guest's owner,
mode (setuid included) and device numbers live in ``user.virtfs.*`` xattrs, so root in
the guest cannot make a setuid-root file or a device node on the host.
(``security_model=none``, which the qemu backend used so far, passes chmod 4755 and
chown straight through: measured, guest root made a setuid-root binary on the host.)
Files the host made keep their real owner and mode in the guest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Mapping

__all__ = ["ninep_args", "ninep_mount", "NINEP_OPTIONS", "NINEP_CACHE_MODES"]

#: msize 512 KiB: the default (8 KiB in 6.1) makes every large read dozens of round trips.
NINEP_OPTIONS: Final = "trans=virtio,version=9p2000.L,msize=524288"
#: The guest's cache modes: none (every call to the host, the default, what ``sync``
#: in /proc/mounts shows), mmap (page cache for mmap only), loose (metadata and data
#: cached: fast, but host-side changes may not be seen).
NINEP_CACHE_MODES: Final = ("none", "mmap", "loose")
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")


def ninep_args(host_path: Path, tag: str, readonly: bool = False) -> list:
    """``-virtfs`` for one host directory (``id`` = ``tag``, unique per VM)."""
    if not _TAG.match(tag):
        raise ValueError(f"9p mount tag {tag!r} must be 1-31 letters, digits, '_', '.' or '-'")
    path = str(Path(host_path).resolve())
    if "," in path:
        raise ValueError(f"cannot share {path} over 9p: QEMU's -virtfs cannot take a path with a comma "
                         "(rename the directory or use virtiofs)")
    value = f"local,path={path},mount_tag={tag},security_model=mapped-xattr,id={tag}"
    return ["-virtfs", value + (",readonly=on" if readonly else "")]


def ninep_mount(tag: str, target: str, readonly: bool = False, cache: str = "none") -> Mapping[str, str]:
    """The guest bootstrap's mount entry for the 9p share ``tag`` at ``target``."""
    if cache not in NINEP_CACHE_MODES:
        raise ValueError(f"9p cache mode {cache!r} is not one of {', '.join(NINEP_CACHE_MODES)}")
    options = [NINEP_OPTIONS] + ([f"cache={cache}"] if cache != "none" else []) + (["ro"] if readonly else [])
    return {"source": tag, "target": target, "fstype": "9p", "options": ",".join(options)}
