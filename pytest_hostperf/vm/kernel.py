"""The guest's kernel: which one boots the VM, and which of its modules the guest needs."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Final, Iterable, Optional

from pytest_hostperf.vm.model import VmImageError

#: Modules the guest may need, in the order they should be tried (dependencies are
#: resolved from ``modules.dep``, so only the leaves matter here).
WANTED_MODULES: Final = (
    "virtio_pci", "virtio_console", "virtio_blk", "virtio_rng",
    "9pnet_virtio", "9p", "virtiofs", "nvme",
)
#: Loaded only when the guest gets a network interface: the user's ``--hostperf-network``,
#: or the one forward to the session's NFS server (the ``share-nfs`` mount).
NETWORK_MODULES: Final = ("virtio_net", "nfsv4")


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    """A kernel to boot the guest with, and where its modules are."""

    path: Path
    version: str
    initrd: Optional[Path]
    modules_dir: Optional[Path]   # /lib/modules/<version> (host or inside the rootfs)
    source: str                   # "rootfs", "host" or "explicit"


def version_key(version: str) -> list[object]:
    """Sort key for kernel and python versions (``6.1.0-9`` before ``6.1.0-13``)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def find_host_kernel(boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> KernelInfo:
    """The newest host kernel that has its modules installed (Debian cloud kernel first)."""
    candidates = []
    for kernel in boot_dir.glob("vmlinuz-*"):
        version = kernel.name[len("vmlinuz-"):]
        if (modules_root / version).is_dir():
            candidates.append((("cloud" in version), version_key(version), kernel, version))
    if not candidates:
        raise VmImageError(
            f"no kernel found: neither the root filesystem nor {boot_dir} has a vmlinuz-* "
            f"with modules in {modules_root}",
            hint="apt-get install linux-image-cloud-amd64 (or run .ci/install-qemu.sh)",
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    _, _, kernel, version = candidates[-1]
    initrd = boot_dir / f"initrd.img-{version}"
    return KernelInfo(kernel, version, initrd if initrd.exists() else None, modules_root / version, "host")


def rootfs_kernel(rootfs: Path) -> Optional[KernelInfo]:
    """The kernel a root filesystem brings in its own /boot, if any."""
    boot = rootfs / "boot"
    if not boot.is_dir():
        return None
    for module_root in (rootfs / "lib" / "modules", rootfs / "usr" / "lib" / "modules"):
        try:
            return dataclasses.replace(find_host_kernel(boot, module_root), source="rootfs")
        except VmImageError:
            continue
    return None


def explicit_kernel(kernel: Path, initrd: Optional[Path] = None) -> KernelInfo:
    """A kernel the user named; its modules are looked up in /lib/modules/<version>."""
    kernel = Path(kernel)
    if not kernel.is_file():
        raise VmImageError(f"no kernel found at {kernel}",
                           hint="pass an existing vmlinuz, or none to use the host's /boot/vmlinuz-*")
    if not os.access(kernel, os.R_OK):
        raise VmImageError(f"kernel {kernel} is not readable by this user",
                           hint=f"chmod a+r {kernel}, or run as a user that can read it")
    version = kernel.name[len("vmlinuz-"):] if kernel.name.startswith("vmlinuz-") else ""
    modules = Path("/lib/modules") / version if version else None
    if initrd is None and version:
        guess = kernel.parent / f"initrd.img-{version}"
        initrd = guess if guess.exists() else None
    return KernelInfo(kernel, version, initrd, modules if modules and modules.is_dir() else None, "explicit")


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p`` (dashes as underscores, like modprobe)."""
    name = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def builtin_module_names(modules_dir: Optional[Path]) -> set[str]:
    """Names of the modules compiled into a kernel (its ``modules.builtin``)."""
    if modules_dir is None:
        return set()
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except OSError:
        return set()
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def builtin_modules(kernel: KernelInfo) -> set[str]:
    """Names of the modules compiled into ``kernel``."""
    return builtin_module_names(kernel.modules_dir)


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to the modules dir) of ``wanted`` and their dependencies, each after
    everything it needs. ``modules_dep`` is the text of ``modules.dep``; a wanted name that
    is not there is left out (built in, or absent from this kernel)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, colon, rest = line.partition(":")
        if not colon:
            continue
        deps[path] = rest.split()
        by_name[module_name(path)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists a module's dependencies, the deepest last: load those first.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def install_modules(kernel: KernelInfo, tree: Path) -> tuple[list[str], list[str]]:
    """Copy the wanted modules (and what they depend on) into the root filesystem ``tree``.

    Returns (base, network): guest paths in load order, dependencies first.
    """
    if kernel.modules_dir is None:
        return [], []
    try:
        dep_text = (kernel.modules_dir / "modules.dep").read_text()
    except OSError:
        return [], []
    lists = [module_load_order(dep_text, names) for names in (WANTED_MODULES, NETWORK_MODULES)]
    guest_modules = Path("lib/modules") / kernel.version
    for rel in lists[0] + lists[1]:
        target = tree / guest_modules / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.modules_dir / rel, target)
    base, network = (["/" + str(guest_modules / rel) for rel in part] for part in lists)
    return base, [m for m in network if m not in base]
