"""The initramfs writer and the guest kernel cache, without booting anything.

The archive is checked with the real ``cpio`` tool (what any initramfs must satisfy
besides the kernel); the boot itself is exercised by ``test_vm_shares.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_hostperf.vm import guest_kernel, initramfs
from pytest_hostperf.vm.kernel import module_load_order, module_name

MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
"""


def test_load_order_puts_every_dependency_first() -> None:
    order = module_load_order(MODULES_DEP, ["9p", "virtio_rng", "not_there"])
    assert order == ["kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/net/9p/9pnet.ko",
                     "kernel/fs/9p/9p.ko", "kernel/drivers/virtio/virtio.ko",
                     "kernel/drivers/char/hw_random/virtio-rng.ko"]


def test_module_names_match_lsmod() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("a/b/9pnet_virtio.ko.xz") == "9pnet_virtio"


def _fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    modules = tmp_path / "modules"
    for rel in module_load_order(MODULES_DEP, ["9p"]):
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_bytes(rel.encode() * 3)
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really")
    return modules, busybox


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool to read the archive back")
def test_archive_unpacks_with_cpio_and_is_reproducible(tmp_path: Path) -> None:
    modules, busybox = _fake_tree(tmp_path)
    order = module_load_order(MODULES_DEP, ["9p"])
    first, second = tmp_path / "a.cpio", tmp_path / "b.cpio"
    size = initramfs.write_initramfs(first, busybox, modules, order)
    initramfs.write_initramfs(second, busybox, modules, order)
    assert first.read_bytes() == second.read_bytes()   # the kernel cache keys on the inputs
    assert size == first.stat().st_size and size % 512 == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "-F", str(first)], cwd=out, check=True)
    assert (out / "init").read_bytes() == initramfs.init_script()
    assert (out / "init").read_text().startswith("#!/bin/busybox sh")
    assert (out / "init").stat().st_mode & 0o111
    assert (out / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    listed = (out / "modules.list").read_text().split()
    assert listed == [f"lib/modules/{rel}" for rel in order]
    for rel in order:
        assert (out / "lib" / "modules" / rel).read_bytes() == (modules / rel).read_bytes()
    for directory in ("dev", "proc", "sys", "newroot"):
        assert (out / directory).is_dir()


def test_static_elf_detection(tmp_path: Path) -> None:
    dynamic = Path("/bin/sh").resolve()
    assert guest_kernel.is_static_elf(dynamic) is False
    assert guest_kernel.is_static_elf(tmp_path / "missing") is False
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert guest_kernel.is_static_elf(script) is False


def test_offline_without_packages_says_what_to_copy(tmp_path: Path) -> None:
    with pytest.raises(guest_kernel.GuestKernelError) as info:
        guest_kernel.ensure_guest_kernel(tmp_path, offline=True)
    message = str(info.value)
    assert str(tmp_path / "debs") in message and "linux-image" in message


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                    reason="needs Debian's apt-get and dpkg-deb")
def test_kernel_is_downloaded_unpacked_and_cached(tmp_path: Path) -> None:
    """The production path from an empty cache: apt-get download, depmod, initramfs."""
    lines: list[str] = []
    kernel = guest_kernel.ensure_guest_kernel(tmp_path, lines.append)
    assert kernel.version.endswith("-amd64") and "cloud" not in kernel.version
    assert {"9p", "nfs", "overlay", "virtiofs"} <= set(kernel.features)
    assert any("downloading" in line for line in lines), lines
    again = guest_kernel.ensure_guest_kernel(tmp_path, lines.append, offline=True)
    assert again == kernel   # offline: the cached packages and build are reused
