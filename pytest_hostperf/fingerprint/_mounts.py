"""Which filesystem each mount under test really is, in words a person recognises."""

from __future__ import annotations

import re
from typing import Any, Final, Mapping

from pytest_hostperf.fingerprint import _files

# Exact fstype -> label. Order does not matter; the special cases are in the function.
_FSTYPE_LABELS: Final[Mapping[str, str]] = {
    "fuse.osxfs": "Docker Desktop osxfs (macOS)",
    "fuse.grpcfuse": "Docker Desktop gRPC FUSE",
    # Docker Desktop's VirtioFS shares show up inside containers under this name.
    "fakeowner": "Docker Desktop VirtioFS",
    "virtiofs": "virtiofs host share",
    "9p": "9p host share",
    "drvfs": "WSL1 drvfs (Windows drive)",
    "fuse.sshfs": "sshfs (network)",
    "vboxsf": "VirtualBox shared folder",
    "vmhgfs": "VMware shared folder",
    "fuse.vmhgfs-fuse": "VMware shared folder",
    "prl_fs": "Parallels shared folder",
    "nfs": "NFS (network)",
    "nfs4": "NFS (network)",
    "cifs": "SMB/CIFS (network)",
    "smb3": "SMB/CIFS (network)",
    "overlay": "overlayfs (container layer)",
    "fuse-overlayfs": "fuse-overlayfs (rootless container layer)",
    "fuse.fuse-overlayfs": "fuse-overlayfs (rootless container layer)",
    "aufs": "aufs (container layer)",
    "tmpfs": "tmpfs (memory)",
    "ramfs": "ramfs (memory)",
    "squashfs": "squashfs (read-only image)",
    "rootfs": "initramfs (memory)",
}

# Filesystems that live on a block device of the machine (or of the VM) itself.
_LOCAL_DISK: Final = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
    "bcachefs", "apfs", "hfs", "hfsplus", "ntfs", "ntfs3", "vfat", "exfat",
})

# overlayfs options list host paths of every image layer: kilobytes that say nothing
# inside the environment, so they are left out of the reported options.
_NOISY_OPTIONS: Final = ("lowerdir=", "upperdir=", "workdir=", "redirect_dir=", "metacopy=")

# "C:\" or "C:/": the source of a Windows drive share, whatever transport carries it.
_WINDOWS_DRIVE: Final = re.compile(r"^[A-Za-z]:[\\/]")


def classify_filesystem(fstype: str, options: str = "", source: str = "") -> str:
    """A human label for a mount: what kind of storage a benchmark on it really hits.

    ``fstype``, ``options`` and ``source`` are the fields of a ``/proc/mounts`` line.
    Unknown types come back unchanged, so the label is never less informative than the
    raw type.
    """
    fstype = (fstype or "").strip()
    if not fstype:
        return "unknown"
    # WSL2 mounts Windows drives over 9p (newer builds: virtiofs) with aname=drvfs; the
    # Windows side makes them ~30x slower per call than the Linux side, so name them.
    if fstype in ("9p", "virtiofs") and ("aname=drvfs" in options or _WINDOWS_DRIVE.match(source or "")):
        return "WSL2 drvfs (Windows drive)"
    label = _FSTYPE_LABELS.get(fstype)
    if label is not None:
        return label
    if fstype in _LOCAL_DISK:
        return f"local disk ({fstype})"
    if fstype.startswith("fuse."):
        return f"FUSE ({fstype[len('fuse.'):]})"
    return fstype


def collect_mounts(mount_paths: Mapping[str, str] | None, root: str = "/") -> dict[str, dict[str, Any]]:
    """For each named path, the mount that holds it (longest mount-point prefix).

    The path is resolved first (symlinks followed inside ``root``) because a benchmark
    directory reached through a symlink is stored wherever the link points.
    """
    if not mount_paths:
        return {}
    table = _files.mount_table(root)
    result: dict[str, dict[str, Any]] = {}
    for name, path in mount_paths.items():
        real = _files.resolve(root, str(path))
        entry = _files.mount_for(real, table)
        if entry is None:
            result[str(name)] = {
                "path": real, "mount_point": None, "fstype": None,
                "source": None, "options": None, "kind": None,
            }
            continue
        result[str(name)] = {
            "path": real,
            "mount_point": entry.mount_point,
            "fstype": entry.fstype,
            "source": entry.source,
            "options": ",".join(
                opt for opt in entry.options.split(",") if opt and not opt.startswith(_NOISY_OPTIONS)
            ),
            "kind": classify_filesystem(entry.fstype, entry.options, entry.source),
        }
    return result


# Options of shared file systems that change what an operation costs: the guest's cache
# mode and message size for 9p, the protocol version, transfer sizes and consistency
# rules for NFS. A baseline saved with other values is a different set-up.
_TIMING_OPTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "9p": ("cache", "msize", "trans"),
    "nfs": ("vers", "proto", "rsize", "wsize", "hard", "soft", "nocto", "noac", "actimeo", "acregmin", "acregmax"),
    "nfs4": ("vers", "proto", "rsize", "wsize", "hard", "soft", "nocto", "noac", "actimeo", "acregmin", "acregmax"),
}
# Host-side facts (the backend's, under "outside") that change timings of a share.
_OUTSIDE_TIMING_KEYS: Final = ("cache", "security_model")


def mount_signature(info: Mapping[str, Any] | None) -> str | None:
    """The file system of a mount and the options that change its timings, as one string.

    ``info`` is an entry of :func:`collect_mounts` (``fstype``, ``options``), optionally
    with the host side's facts under ``outside`` (virtiofsd's cache mode, 9p's security
    model). ``9p cache=none msize=512000 trans=virtio security_model=mapped-xattr``,
    ``nfs4 vers=4.2 proto=tcp rsize=1048576 wsize=1048576 hard``, ``virtiofs cache=auto``;
    a plain ``ext4`` for the rest. 9p without ``cache=`` is ``cache=none`` (the kernel shows it as ``sync,dirsync``).
    """
    if not isinstance(info, Mapping) or not info.get("fstype"):
        return None
    fstype = str(info["fstype"])
    options: dict[str, str] = {}
    for option in str(info.get("options") or "").split(","):
        key, _, value = option.partition("=")
        if key:
            options[key] = value
    parts = [fstype]
    for key in _TIMING_OPTIONS.get(fstype, ()):
        if key in options:
            parts.append(f"{key}={options[key]}" if options[key] else key)
        elif fstype == "9p" and key == "cache":
            parts.append("cache=none")
    outside = info.get("outside")
    if isinstance(outside, Mapping):
        for key in _OUTSIDE_TIMING_KEYS:
            if outside.get(key) and not any(p.startswith(f"{key}=") for p in parts[1:]):
                parts.append(f"{key}={outside[key]}")
    return " ".join(parts)
