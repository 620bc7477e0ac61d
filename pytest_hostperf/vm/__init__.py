"""VM disks for the qemu environment: the guest kernel, the disk cache, the disk builder.

* :mod:`.model`: :class:`VmDisk`, :class:`VmImageError`, the guest's layout;
* :mod:`.kernel`: which kernel boots the guest and which modules it needs;
* :mod:`.cache`: where built disks live, their names, pruning, killed-build leftovers;
* :mod:`.disk`: root filesystem (directory or tar stream) -> cached ext4 disk.

The guest's own programs are real modules of the agent package:
:mod:`pytest_hostperf.agent.boot` and ``agent/guest_init.sh``.
"""

from __future__ import annotations

from pytest_hostperf.vm.cache import (
    CachedDisk,
    cache_digest,
    cached_disks,
    default_cache_dir,
    load_cached,
    prune_cache,
    sweep_build_dirs,
)
from pytest_hostperf.vm.disk import RootfsSource, build_debootstrap_rootfs, build_vm_disk
from pytest_hostperf.vm.kernel import KernelInfo, explicit_kernel, find_host_kernel
from pytest_hostperf.vm.model import GUEST_INIT, VmDisk, VmImageError

__all__ = [
    "GUEST_INIT",
    "CachedDisk",
    "KernelInfo",
    "RootfsSource",
    "VmDisk",
    "VmImageError",
    "build_debootstrap_rootfs",
    "build_vm_disk",
    "cache_digest",
    "cached_disks",
    "default_cache_dir",
    "explicit_kernel",
    "find_host_kernel",
    "load_cached",
    "prune_cache",
    "sweep_build_dirs",
]
