"""pytest_hostperf.vm: root filesystem -> cached, bootable ext4 disk (real mke2fs/debugfs, no VM).

The root filesystems here are tiny fakes (a /bin/sh and a python3 that never run); the
booting itself is covered by test_qemu_env.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_hostperf import vm
from pytest_hostperf.agent import boot
from pytest_hostperf.progress import Reporter

pytestmark = pytest.mark.qemu


def _host_kernel_or_skip() -> vm.KernelInfo:
    try:
        return vm.find_host_kernel()
    except vm.VmImageError:
        if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
            raise
        pytest.skip("no host kernel with modules (apt-get install linux-image-cloud-amd64)")


if shutil.which("mke2fs") is None and shutil.which("/sbin/mke2fs") is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("mke2fs is not installed", allow_module_level=True)


def _fake_rootfs(root: Path) -> Path:
    for rel in ("bin/sh", "usr/bin/python3", "etc/os-release", ".dockerenv"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/false\n" if "bin" in rel else "fake\n")
        path.chmod(0o755)
    (root / "dev").mkdir()
    return root


def _debugfs(image: Path, command: str) -> str:
    proc = subprocess.run(["debugfs", "-R", command, str(image)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=True)
    return proc.stdout + proc.stderr


def _cat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, check=True).stdout


def test_build_from_directory_and_cache_hit(tmp_path: Path) -> None:
    kernel = _host_kernel_or_skip()
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    progress: list[str] = []
    disk = vm.build_vm_disk(rootfs, tmp_path / "cache", key="fake-1", reporter=Reporter(progress.append))
    assert disk.path.is_file() and disk.kernel.is_file()
    assert disk.kernel_version == kernel.version
    assert disk.key == "fake-1"
    assert disk.python == "/usr/bin/python3"
    assert disk.root_device in ("nvme", "virtio")
    assert any("building VM disk" in line for line in progress)
    # The guest init and the module list are in the image; the source tree is untouched.
    init = _debugfs(disk.path, "cat /opt/hostperf/init")
    assert init.startswith("#!/bin/sh") and "-m pytest_hostperf.agent.boot" in init
    assert _cat(disk.path, "/opt/hostperf/python").strip() == "/usr/bin/python3"
    # The bootstrap and the protocol module it imports are on the disk, byte for byte.
    for rel in ("pytest_hostperf/agent/boot.py", "pytest_hostperf/agent/protocol.py"):
        assert _cat(disk.path, f"/opt/hostperf/{rel}") == (Path(boot.__file__).parent / Path(rel).name).read_text()
    assert not (rootfs / "opt").exists()
    modules = _debugfs(disk.path, "cat /opt/hostperf/modules.list").split()
    names = [Path(m).name for m in modules]
    if "virtio_console.ko" in names:
        # Dependencies come first.
        assert names.index("virtio.ko") < names.index("virtio_console.ko")
        assert names.index("virtio_ring.ko") < names.index("virtio_pci.ko")
        assert "Inode" in _debugfs(disk.path, f"stat {modules[0]}")
    # Second call: a cache hit that never reads the source.
    again = vm.build_vm_disk(tmp_path / "gone", tmp_path / "cache", key="fake-1", reporter=Reporter(progress.append))
    assert again == disk


def test_build_from_tar_chunks_drops_docker_leftovers(tmp_path: Path) -> None:
    _host_kernel_or_skip()
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    data = buffer.getvalue()
    chunks = (data[i:i + 4096] for i in range(0, len(data), 4096))   # like container.export()
    disk = vm.build_vm_disk(chunks, tmp_path / "cache", key="sha256:abc", env={"PATH": "/venv/bin:/usr/bin"})
    assert disk.env == {"PATH": "/venv/bin:/usr/bin"}
    listing = _debugfs(disk.path, "ls -l /")
    assert "opt" in listing and ".dockerenv" not in listing
    # Loaded back from the manifest with the same fields.
    assert vm.load_cached(tmp_path / "cache", "sha256:abc") == disk


def test_streamed_rootfs_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(vm.VmImageError, match="needs a key"):
        vm.build_vm_disk(io.BytesIO(b""), tmp_path)


def test_missing_python_is_reported(tmp_path: Path) -> None:
    _host_kernel_or_skip()
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    with pytest.raises(vm.VmImageError, match="no python3"):
        vm.build_vm_disk(rootfs, tmp_path / "cache", key="nopython")
    assert not list((tmp_path / "cache").glob(".build-*")), "a failed build leaves no staging dir"


def test_explicit_kernel_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(vm.VmImageError, match="no kernel found at") as info:
        vm.build_vm_disk(_fake_rootfs(tmp_path / "r"), tmp_path / "cache", key="k",
                              kernel=tmp_path / "vmlinuz-nope")
    assert info.value.hint


def test_no_host_kernel(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    with pytest.raises(vm.VmImageError, match="no kernel found") as info:
        vm.find_host_kernel(tmp_path / "boot", tmp_path / "modules")
    assert "linux-image-cloud-amd64" in info.value.hint


def test_host_kernel_prefers_cloud_and_needs_modules(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for version, with_modules in (("6.1.0-9-amd64", True), ("6.1.0-5-cloud-amd64", True),
                                  ("6.1.0-7-cloud-amd64", False)):
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{version}").write_text("k")
        if with_modules:
            (modules / version).mkdir(parents=True)
    (boot / "initrd.img-6.1.0-5-cloud-amd64").write_text("i")
    kernel = vm.find_host_kernel(boot, modules)
    assert kernel.version == "6.1.0-5-cloud-amd64"
    assert kernel.initrd == boot / "initrd.img-6.1.0-5-cloud-amd64"


def test_cache_key_changes_with_the_key(tmp_path: Path) -> None:
    assert vm.cache_digest("a") != vm.cache_digest("b")
    assert vm.cache_digest("a") == vm.cache_digest("a")


def test_prune_keeps_the_most_recently_used(tmp_path: Path) -> None:
    for index, name in enumerate(["a", "b", "c"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "disk.json").write_text("{}")
        os.utime(tmp_path / name / "disk.json", (1000 + index, 1000 + index))
    assert vm.prune_cache(tmp_path, keep=1, protect=[tmp_path / "a"]) == [tmp_path / "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]
