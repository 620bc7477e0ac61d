"""9p and NFS shares into a real QEMU VM booted with the generic kernel + our initramfs.

Each test boots the project's cached VM disk (the qemu backend's own) with
:mod:`pytest_hostperf.vm.guest_kernel`'s kernel, runs a shell script in the guest
through the guest bootstrap and checks, from the host, what the guest could do to the
host's files. Boots take 10-60 s under TCG on a loaded 2-core host.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from pytest_hostperf import vmimage
from pytest_hostperf.environments import nfs
from pytest_hostperf.environments import qemu as qemu_mod
from pytest_hostperf.environments.qemu import QemuEnvironment
from pytest_hostperf.environments import vmshares as shares
from pytest_hostperf.vm import guest_kernel
from pytest_hostperf.vm.guest import USER_NETWORK, GuestVM, LaunchSpec

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

if qemu_mod.find_qemu() is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def kernel() -> guest_kernel.GuestKernel:
    return guest_kernel.ensure_guest_kernel(progress=print)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> vmimage.VmDisk:
    project = tmp_path_factory.mktemp("project")
    return QemuEnvironment(project, progress=print).prepare()


def _vm(disk: vmimage.VmDisk, kernel: guest_kernel.GuestKernel, name: str, args: list) -> GuestVM:
    return GuestVM(disk.path, kernel.kernel, kernel.initrd, session_id=f"test-{name}-{os.getpid()}",
                   qemu_args=args)


def test_initramfs_kernel_has_every_share_type(kernel: guest_kernel.GuestKernel) -> None:
    assert {"9p", "virtiofs", "nfs", "overlay"} <= set(kernel.features), kernel
    with open(kernel.kernel, "rb") as image:
        image.seek(0x202)
        assert image.read(4) == b"HdrS"   # an x86 bzImage (the boot protocol header)
    assert kernel.initrd.stat().st_size == kernel.initrd_bytes


def test_9p_mapped_xattr_keeps_setuid_off_the_host(tmp_path: Path, disk: vmimage.VmDisk,
                                                    kernel: guest_kernel.GuestKernel) -> None:
    """One VM, two 9p shares: the mapped-xattr one we use, and security_model=none as the
    control that shows what the check catches (guest root makes a setuid-root file)."""
    mapped, passthrough = tmp_path / "mapped", tmp_path / "none"
    for directory in (mapped, passthrough):
        directory.mkdir()
        (directory / "from-host").write_text("host data\n")
    args = shares.ninep_args(mapped, "mapped") + [
        "-virtfs", f"local,path={passthrough},mount_tag=none,security_model=none,id=none"]
    script = """
        grep -E ' /mnt/(mapped|none) ' /proc/mounts
        for d in mapped none; do
            cat /mnt/$d/from-host
            cp /bin/true /mnt/$d/suid && chmod 4755 /mnt/$d/suid
            stat -c "$d %A %u" /mnt/$d/suid
        done
    """
    with _vm(disk, kernel, "9p", args) as vm:
        vm.boot()
        status, out = vm.run(LaunchSpec(["/bin/sh", "-ec", script],
                                        mounts=[shares.ninep_mount("mapped", "/mnt/mapped"),
                                                shares.ninep_mount("none", "/mnt/none")]))
    assert status == 0, out
    assert out.count("host data") == 2, out
    assert "mapped -rwsr-xr-x 0" in out and "none -rwsr-xr-x 0" in out, out   # as the guest sees it
    mount_line = next(line for line in out.splitlines() if " /mnt/mapped " in line)
    assert mount_line.split()[2] == "9p" and "trans=virtio" in mount_line, mount_line
    mapped_mode = (mapped / "suid").stat().st_mode
    assert not mapped_mode & (stat.S_ISUID | stat.S_ISGID | 0o077), oct(mapped_mode)
    assert os.getxattr(mapped / "suid", "user.virtfs.mode")   # the guest's mode lives in an xattr
    control = (passthrough / "suid").stat()
    if os.geteuid() == 0:   # qemu ran as root: without mapping, guest root owns host files
        assert control.st_mode & stat.S_ISUID and control.st_uid == 0, oct(control.st_mode)


@pytest.fixture
def loopback_listener():
    """A listener on the host's loopback that answers every connection: the thing the
    guest must not reach except through an explicit forward."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    hits: list = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            hits.append(1)
            conn.sendall(b"host\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], hits
    server.close()


@pytest.mark.skipif(nfs.find_ganesha() is None or os.geteuid() != 0,
                    reason="needs nfs-ganesha (scripts/setup.sh) and root")
def test_nfs_share_only_reaches_the_server(tmp_path: Path, disk: vmimage.VmDisk, kernel: guest_kernel.GuestKernel,
                                           loopback_listener) -> None:
    port, hits = loopback_listener
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "from-host").write_text("host data\n")
    probe = f"""
import socket
for host, port in [("10.0.2.2", {port}), ("10.0.2.100", {port}), ("10.0.2.101", 7)]:
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((host, port)); print("reached", host, port, s.recv(10).strip().decode())
    except OSError as e:
        print("blocked", host, port, type(e).__name__)
"""
    script = f"""
        grep ' /mnt/nfs ' /proc/mounts
        cat /mnt/nfs/from-host
        echo guest > /mnt/nfs/from-guest
        cp /bin/true /mnt/nfs/suid && chmod 4755 /mnt/nfs/suid
        ls /sys/class/net
        {disk.python} -c '{probe}'
    """
    with nfs.NfsExport(export_dir, f"test-{os.getpid()}") as export:
        # The control forward (10.0.2.101:7 -> the listener) proves the probe can reach
        # something when a forward exists; 10.0.2.2 (the host) must stay unreachable.
        nic = nfs.qemu_nic(export.port, f"guestfwd=tcp:10.0.2.101:7-tcp:127.0.0.1:{port}")
        with _vm(disk, kernel, "nfs", ["-nic", nic]) as vm:
            vm.boot()
            status, out = vm.run(LaunchSpec(["/bin/sh", "-ec", script], network=USER_NETWORK,
                                            mounts=[export.guest_mount("/mnt/nfs")]), timeout=240)
        state = export.state
    assert status == 0, out
    mount_line = next(line for line in out.splitlines() if " /mnt/nfs " in line)
    assert mount_line.split()[2] == "nfs4" and "vers=4.2" in mount_line, mount_line
    assert "host data" in out
    assert (export_dir / "from-guest").read_text() == "guest\n"
    made = (export_dir / "suid").stat()
    assert made.st_uid == nfs.NOBODY, made   # squashed: root in the guest is nobody here
    assert f"blocked 10.0.2.2 {port}" in out and f"blocked 10.0.2.100 {port}" in out, out
    assert "reached 10.0.2.101 7 host" in out, out
    assert len(hits) == 1   # only the control connection got through
    assert state is not None and not state.exists()   # stop() removed the server's state
