"""A tiny initramfs that lets a modular kernel mount the VM's root disk.

Debian's generic kernel (``linux-image-amd64``) has what the cloud kernel lacks (9p,
and every filesystem we share with), but its virtio-blk and ext4 drivers are modules,
so it cannot mount the root disk by itself. Debian's own initrd would do it, but it
needs ``mkinitramfs`` run against an installed kernel and starts udev (seconds under
TCG). This one holds a static busybox, the modules the guest needs and a 30-line
``/init`` (:file:`initramfs_init.sh`) that loads them, mounts ``root=`` and
``switch_root``\\ s into ``init=``: a disk built by :mod:`pytest_hostperf.vm.disk` boots
unchanged. Which modules, in which order, :mod:`.guest_kernel` decides.

The archive is written here (newc cpio, mtimes zero, sorted), so the same inputs
always give the same bytes, which is what the kernel cache keys on.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO, Final, Mapping, Sequence

__all__ = ["GUEST_MODULES", "INIT_SCRIPT_PATH", "CpioWriter", "init_script", "write_initramfs"]

#: The modules the guest loads in the initramfs, leaves only (dependencies come from
#: modules.dep): the root disk (virtio-blk + ext4, whose crc32c is a soft dependency
#: that modules.dep does not list), the agent's port, the three share types, and what
#: a Docker engine in the VM needs (overlay for overlay2, virtio_net for its socket).
GUEST_MODULES: Final = (
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_console", "virtio_rng",
    "9pnet_virtio", "9p", "virtiofs", "nfsv4", "overlay", "virtio_net",
)

#: PID 1 of the initramfs: a real shell file beside this module (busybox sh).
INIT_SCRIPT_PATH: Final = Path(__file__).resolve().parent / "initramfs_init.sh"


def init_script() -> bytes:
    """The initramfs's ``/init`` (part of the guest kernel cache's key)."""
    return INIT_SCRIPT_PATH.read_bytes()


class CpioWriter:
    """A minimal, reproducible ``newc`` cpio writer (what the kernel unpacks)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._inode = 1
        self._dirs: set[str] = set()

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
                    extra_files: Mapping[str, bytes] | None = None) -> int:
    """Write the initramfs to ``out``; return its size in bytes.

    ``busybox`` must be statically linked (nothing else is in the archive);
    ``module_paths`` are relative to ``modules_dir``, in load order
    (:func:`pytest_hostperf.vm.kernel.module_load_order`).
    """
    with open(out, "wb") as stream:
        cpio = CpioWriter(stream)
        for directory in ("bin", "dev", "proc", "sys", "newroot"):
            cpio.directory(directory)
        cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        cpio.file("init", init_script(), 0o755)
        listing = "".join(f"lib/modules/{rel}\n" for rel in module_paths)
        cpio.file("modules.list", listing.encode())
        for rel in module_paths:
            cpio.file(f"lib/modules/{rel}", (Path(modules_dir) / rel).read_bytes())
        for name, data in sorted((extra_files or {}).items()):
            cpio.file(name, data)
        cpio.close()
        return stream.tell()
