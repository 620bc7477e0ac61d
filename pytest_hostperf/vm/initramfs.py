"""A tiny initramfs that lets a modular kernel mount the VM's root disk.

Debian's generic kernel (``linux-image-amd64``) has what the cloud kernel lacks (9p,
and every filesystem we share with), but its virtio-blk and ext4 drivers are modules,
so it cannot mount the root disk by itself. Debian's own initrd would do it, but it
needs ``mkinitramfs`` run against an installed kernel and starts udev (seconds under
TCG). This one holds a static busybox, the modules the guest needs and a 30-line
``/init`` that loads them, mounts ``root=`` and ``switch_root``\\ s into ``init=``:
the disk built by :mod:`pytest_hostperf.vmimage` boots unchanged.

The archive is written here (newc cpio, mtimes zero, sorted), so the same inputs
always give the same bytes, which is what the kernel cache keys on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Final, Iterable, Mapping, Sequence

__all__ = ["GUEST_MODULES", "module_load_order", "write_initramfs", "INIT_SCRIPT", "CpioWriter"]

#: The modules the guest loads in the initramfs, leaves only (dependencies come from
#: modules.dep): the root disk (virtio-blk + ext4, whose crc32c is a soft dependency
#: that modules.dep does not list), the agent's port, the three share types, and what
#: a Docker engine in the VM needs (overlay for overlay2, virtio_net for its socket).
GUEST_MODULES: Final = (
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_console", "virtio_rng",
    "9pnet_virtio", "9p", "virtiofs", "nfsv4", "overlay", "virtio_net",
)

# PID 1 of the initramfs. Failures go to the console and power the VM off, so the
# controller sees "qemu exited" with the reason in the console log, never a hang.
INIT_SCRIPT: Final = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "hostperf-initramfs: $*" > /dev/console; sleep 1; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "basic mounts"
for module in $(cat /modules.list); do
    insmod "/$module" 2>/dev/null || grep -q "^$(basename "$module" .ko) " /proc/modules \\
        || echo "hostperf-initramfs: insmod $module failed" > /dev/console
done
root=/dev/vda init=/sbin/init fstype=ext4 mode=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        init=*) init="${arg#init=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        ro) mode=ro ;;
    esac
done
tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1)); [ "$tries" -gt 600 ] && fail "root device $root did not appear"
    sleep 0.05
done
mkdir -p /newroot
mount -t "$fstype" -o "$mode" "$root" /newroot || fail "mount -t $fstype $root failed"
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /sys /proc
exec switch_root /newroot "$init"
"""


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list:
    """Paths (relative to the modules dir) of ``wanted`` and their dependencies, each
    after everything it needs. ``modules_dep`` is the text of ``modules.dep``; a
    wanted name that is not there is left out (it is built in, or absent)."""
    deps: dict = {}
    by_name: dict = {}
    for line in modules_dep.splitlines():
        path, colon, rest = line.partition(":")
        if not colon:
            continue
        deps[path] = rest.split()
        by_name[module_name(path)] = path
    order: list = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists a module's dependencies with the deepest last.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p``; dashes become underscores as in lsmod."""
    name = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


class CpioWriter:
    """A minimal, reproducible ``newc`` cpio writer (what the kernel unpacks)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._inode = 1
        self._dirs: set = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self._inode += 1
        self._out.write(header + encoded + b"\0" * (-(110 + len(encoded)) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        """Add ``name`` and its parents (once each)."""
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path and path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name.strip("/"), stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
        self._out.write(b"\0" * (-self._out.tell() % 512))


def write_initramfs(out: Path, busybox: Path, modules_dir: Path, module_paths: Sequence[str],
                    extra_files: Mapping[str, bytes] = {}) -> int:
    """Write the initramfs to ``out``; return its size in bytes.

    ``busybox`` must be statically linked (nothing else is in the archive);
    ``module_paths`` come from :func:`module_load_order`.
    """
    with open(out, "wb") as stream:
        cpio = CpioWriter(stream)
        for directory in ("bin", "dev", "proc", "sys", "newroot"):
            cpio.directory(directory)
        cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        cpio.file("init", INIT_SCRIPT.encode(), 0o755)
        listing = "".join(f"lib/modules/{rel}\n" for rel in module_paths)
        cpio.file("modules.list", listing.encode())
        for rel in module_paths:
            cpio.file(f"lib/modules/{rel}", (Path(modules_dir) / rel).read_bytes())
        for name, data in sorted(extra_files.items()):
            cpio.file(name, data)
        cpio.close()
        return stream.tell()
