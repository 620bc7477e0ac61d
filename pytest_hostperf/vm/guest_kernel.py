"""A guest kernel that can mount every share type: Debian's generic kernel + our initramfs.

Debian's cloud kernel (what the qemu environment boots by default) has NVMe built in
and boots without an initrd, but it has no 9p at all. Debian's generic kernel
(``linux-image-amd64``) has 9p, virtiofs, NFS and overlay as modules, and its root
disk drivers are modules too, so it comes with the small initramfs of
:mod:`pytest_hostperf.vm.initramfs`. Neither needs installing on the host: the kernel
package is downloaded once with ``apt-get download`` (or taken from ``/boot`` when the
host has it) and unpacked into the cache.

Cache key: the kernel package file (name = package and version, and its size), the
busybox binary's hash, the module list and the initramfs init. The VM disk does not
depend on it: any hostperf disk boots with any of these kernels (the modules the guest
needs are all in the initramfs), so a 9p VM reuses the disk the other VMs use.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Final, Optional

from pytest_hostperf.vm import initramfs
from pytest_hostperf.vm.kernel import builtin_module_names, module_load_order, module_name

__all__ = ["KERNEL_META_PACKAGE", "GuestKernel", "GuestKernelError", "cached_guest_kernel", "default_kernel_cache",
           "ensure_guest_kernel", "is_static_elf"]

#: The Debian meta-package whose dependency names the current generic kernel.
KERNEL_META_PACKAGE: Final = "linux-image-amd64"
BUSYBOX_PACKAGE: Final = "busybox-static"
_MODULE_FEATURES: Final = {"9p": "9p", "virtiofs": "virtiofs", "nfs": "nfsv4", "overlay": "overlay"}

Progress = Callable[[str], None]


class GuestKernelError(Exception):
    """The guest kernel could not be prepared; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    """A bootable kernel + initramfs pair and what its guest can mount."""

    kernel: Path
    initrd: Path
    version: str                 # uname -r inside the guest
    package: str                 # the .deb it came from (or "host:/boot/vmlinuz-...")
    features: tuple[str, ...]    # subset of ("9p", "virtiofs", "nfs", "overlay")
    initrd_bytes: int = 0

    @property
    def root_device(self) -> str:
        """The root disk is virtio-blk: the initramfs loads its driver."""
        return "virtio"


def default_kernel_cache() -> Path:
    """``~/.cache/pytest-hostperf/kernels`` (or under ``$XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-hostperf" / "kernels"


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an x86-64 ELF executable without a program interpreter."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:
                return False
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    kinds = {struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)}
    return 3 not in kinds   # PT_INTERP


def ensure_guest_kernel(cache_dir: Optional[Path] = None, progress: Optional[Progress] = None,
                        *, offline: bool = False) -> GuestKernel:
    """The cached generic kernel + initramfs, built on first use.

    Looks for the kernel package in ``cache_dir/debs`` first, then downloads it with
    ``apt-get download`` (unless ``offline``). Raises :class:`GuestKernelError` with the fix.
    """
    say = progress or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir else default_kernel_cache()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another session may be fetching the same files
        kernel_deb = _package_file(debs, _kernel_package_name(debs, offline), offline, say)
        busybox_deb = _static_busybox_deb(debs, offline, say)
        digest = _digest(kernel_deb, busybox_deb)
        final = cache / digest
        manifest = final / "kernel.json"
        if manifest.is_file():
            return _load(final, manifest)
        staging = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache))
        try:
            say(f"preparing guest kernel {kernel_deb.name} with a 9p/NFS-capable initramfs")
            kernel = _build(kernel_deb, busybox_deb, staging)
            (staging / "out" / "kernel.json").write_text(json.dumps(_to_json(kernel), indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging / "out", final)
            _prune(cache, final)
            return _load(final, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def cached_guest_kernel(cache_dir: Optional[Path] = None) -> Optional[GuestKernel]:
    """The newest guest kernel already built in the cache (no download, no build), or None."""
    cache = Path(cache_dir) if cache_dir else default_kernel_cache()
    built = sorted(cache.glob("*/kernel.json"), key=lambda path: path.stat().st_mtime)
    for manifest in reversed(built):
        try:
            return _load(manifest.parent, manifest)
        except (OSError, ValueError, KeyError):
            continue
    return None


def _prune(cache: Path, keep: Path, kept: int = 2) -> None:
    """Remove all but the ``kept`` newest kernel builds (a Debian kernel update makes a new one)."""
    built = sorted((m.parent for m in cache.glob("*/kernel.json") if m.parent != keep),
                   key=lambda path: path.stat().st_mtime, reverse=True)
    for directory in built[kept - 1:]:
        shutil.rmtree(directory, ignore_errors=True)
    wanted = {json.loads((m.parent / "kernel.json").read_text()).get("package") for m in cache.glob("*/kernel.json")}
    for deb in (cache / "debs").glob("linux-image-*.deb"):
        if deb.name not in wanted:
            deb.unlink(missing_ok=True)


def _kernel_package_name(debs: Path, offline: bool) -> str:
    """``linux-image-<abi>-amd64``: what the meta-package depends on now."""
    if not offline and shutil.which("apt-cache"):
        proc = subprocess.run(["apt-cache", "depends", KERNEL_META_PACKAGE], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, check=False)
        match = re.search(r"Depends: (linux-image-\S+-amd64)\b", proc.stdout)
        if match:
            return match.group(1)
    cached = sorted(p.name.split("_")[0] for p in debs.glob("linux-image-*-amd64_*.deb")
                    if "-cloud-" not in p.name and "-dbg" not in p.name)
    if cached:
        return cached[-1]
    raise GuestKernelError(
        f"cannot tell which generic kernel package to use: apt-cache knows no {KERNEL_META_PACKAGE} "
        f"and {debs} holds no linux-image-*-amd64_*.deb",
        hint=f"run `apt-get update`, or put a Debian linux-image-*-amd64 .deb into {debs}")


def _package_file(debs: Path, package: str, offline: bool, say: Progress) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if offline or shutil.which("apt-get") is None:
        raise GuestKernelError(f"{package} is not in {debs} and downloading is off",
                               hint=f"copy {package}_*.deb into {debs} (apt-get download {package})")
    say(f"downloading {package} (Debian package, once)")
    proc = subprocess.run(["apt-get", "download", "-q", package], cwd=debs, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not found:
        raise GuestKernelError(f"apt-get download {package} failed (exit {proc.returncode}): "
                               f"{proc.stdout.strip()[-400:]}",
                               hint="check the Debian package mirror (apt-get update), or copy the .deb "
                                    f"into {debs}")
    return found[-1]


def _static_busybox_deb(debs: Path, offline: bool, say: Progress) -> Path:
    return _package_file(debs, BUSYBOX_PACKAGE, offline, say)


def _digest(kernel_deb: Path, busybox_deb: Path) -> str:
    digest = hashlib.sha256()
    for deb in (kernel_deb, busybox_deb):
        digest.update(f"{deb.name}:{deb.stat().st_size}\0".encode())
    digest.update(repr(initramfs.GUEST_MODULES).encode())
    digest.update(initramfs.init_script())
    return digest.hexdigest()[:20]


def _run(argv: list[str], doing: str) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        raise GuestKernelError(f"{doing} failed: {' '.join(argv)} exited with {proc.returncode}: "
                               f"{proc.stdout.strip()[-400:]}")


def _depmod() -> str:
    for candidate in (shutil.which("depmod"), "/sbin/depmod", "/usr/sbin/depmod"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise GuestKernelError("depmod is not installed (needed to order the guest's kernel modules)",
                           hint="apt-get install kmod")


def _build(kernel_deb: Path, busybox_deb: Path, staging: Path) -> GuestKernel:
    tree = staging / "tree"
    out = staging / "out"
    out.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(kernel_deb), str(tree)], f"unpacking {kernel_deb.name}")
    _run(["dpkg-deb", "-x", str(busybox_deb), str(staging / "busybox")], f"unpacking {busybox_deb.name}")
    busybox = staging / "busybox" / "bin" / "busybox"
    if not is_static_elf(busybox):
        raise GuestKernelError(f"{busybox_deb.name} has no statically linked bin/busybox")
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise GuestKernelError(f"{kernel_deb.name} contains no boot/vmlinuz-*: not a kernel image package")
    version = vmlinuz[-1].name[len("vmlinuz-"):]
    modules_dir = tree / "lib" / "modules" / version
    _run([_depmod(), "-b", str(tree), version], "ordering kernel modules (depmod)")
    dep_text = (modules_dir / "modules.dep").read_text()
    order = module_load_order(dep_text, initramfs.GUEST_MODULES)
    names = {module_name(p) for p in order}
    builtin = builtin_module_names(modules_dir)
    missing = {"virtio_blk", "ext4", "virtio_console"} - names - builtin
    if missing:
        raise GuestKernelError(f"{kernel_deb.name} lacks {', '.join(sorted(missing))}: "
                               "the guest could not mount its root disk or reach the agent port")
    size = initramfs.write_initramfs(out / "initrd.img", busybox, modules_dir, order)
    shutil.copyfile(vmlinuz[-1], out / "vmlinuz")
    have = names | builtin
    features = tuple(feature for feature, module in _MODULE_FEATURES.items() if module in have)
    return GuestKernel(out / "vmlinuz", out / "initrd.img", version, kernel_deb.name, features, size)


def _to_json(kernel: GuestKernel) -> dict[str, object]:
    data = dataclasses.asdict(kernel)
    data["kernel"] = Path(kernel.kernel).name
    data["initrd"] = Path(kernel.initrd).name
    data["features"] = list(kernel.features)
    return data


def _load(directory: Path, manifest: Path) -> GuestKernel:
    data = json.loads(manifest.read_text())
    return GuestKernel(directory / data["kernel"], directory / data["initrd"], data["version"],
                       data["package"], tuple(data["features"]), data.get("initrd_bytes", 0))
