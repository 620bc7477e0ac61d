"""The qemu command line and the share planning, from plain data: no VM is booted here.

test_qemu_env.py boots real VMs with what these functions build.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pytest_hostperf.agent.protocol import AGENT_PORT_NAME
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.environments.limits import Amount, ContainerLimits, parse_amount, parse_pids
from pytest_hostperf.environments.qemu import boot, shares
from pytest_hostperf.environments.qemu.cmdline import ExtraDisk, QemuCommand, VhostUserFs, Virtfs, escape
from pytest_hostperf.vm.model import GUEST_EXTRA, VmDisk

WORK = Path("/run/hp/abc")


def _command(**changes: object) -> QemuCommand:
    fields: dict[str, object] = dict(
        binary="/usr/bin/qemu-system-x86_64", name="hostperf-abc", accel="tcg", vcpus=1, memory_mb=1024,
        kernel=Path("/cache/vmlinuz"), initrd=None, root_device="nvme", overlay=WORK / "overlay.qcow2",
        console_log=WORK / "console.log", pidfile=WORK / "qemu.pid", agent_socket=WORK / "agent.sock",
        init="/opt/hostperf/init")
    fields.update(changes)
    return QemuCommand(**fields)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_tcg_command_line() -> None:
    argv = _command().argv()
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _after(argv, "-accel") == ["tcg,thread=multi"] and _after(argv, "-cpu") == ["max"]
    assert _after(argv, "-smp") == ["1"] and _after(argv, "-m") == ["1024"]
    assert _after(argv, "-name") == ["hostperf-abc,process=hostperf-abc"]
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}" in _after(argv, "-device")
    assert "nvme,drive=root,serial=hostperf-root" in _after(argv, "-device")
    (append,) = _after(argv, "-append")
    assert append.startswith("root=/dev/nvme0n1 ") and "init=/opt/hostperf/init" in append
    assert "earlyprintk" not in append and "quiet" in append


def test_kvm_probe_command_line_has_an_early_console() -> None:
    argv = _command(accel="kvm", vcpus=2, early_console=True).argv()
    assert _after(argv, "-accel") == ["kvm"] and _after(argv, "-cpu") == ["host"] and _after(argv, "-smp") == ["2"]
    assert "earlyprintk=serial,ttyS0" in _after(argv, "-append")[0]


def test_virtio_root_with_initrd() -> None:
    argv = _command(root_device="virtio", initrd=Path("/cache/initrd.img")).argv()
    assert "virtio-blk-pci,drive=root" in _after(argv, "-device")
    assert _after(argv, "-initrd") == ["/cache/initrd.img"]
    assert _after(argv, "-append")[0].startswith("root=/dev/vda ")


def test_network_off_by_default_and_on_when_asked() -> None:
    assert _after(_command().argv(), "-nic") == ["none"]
    assert _after(_command(network=True).argv(), "-nic") == ["user,model=virtio-net-pci"]


def test_share_devices() -> None:
    devices = (Virtfs("project", Path("/p"), True), Virtfs("share", WORK / "share", False, "mapped-xattr"))
    argv = _command(devices=devices).argv()
    assert _after(argv, "-virtfs") == [
        "local,path=/p,mount_tag=project,security_model=none,readonly=on",
        f"local,path={WORK}/share,mount_tag=share,security_model=mapped-xattr"]
    argv = _command(devices=(VhostUserFs("project", WORK / "fs-project.sock"),)).argv()
    assert _after(argv, "-object") == ["memory-backend-memfd,id=mem,size=1024M,share=on"]
    assert _after(argv, "-machine") == ["memory-backend=mem"]
    assert f"socket,id=fs0,path={WORK}/fs-project.sock" in _after(argv, "-chardev")
    assert "vhost-user-fs-pci,chardev=fs0,tag=project" in _after(argv, "-device")
    argv = _command(devices=(ExtraDisk(WORK / "extra.img"),)).argv()
    assert f"file={WORK}/extra.img,if=none,id=extra0,format=raw,readonly=on" in _after(argv, "-drive")
    assert "-virtfs" not in argv and "-object" not in argv


def test_commas_in_paths_are_escaped_everywhere_qemu_parses_options() -> None:
    # Issue 8.15: "/tmp/a,b" would otherwise end the option and start a new one.
    work = Path("/tmp/x,readonly=off/w")
    argv = _command(overlay=work / "overlay.qcow2", console_log=work / "console.log", agent_socket=work / "agent.sock",
                    devices=(Virtfs("share", work / "share", False, "mapped-xattr"), VhostUserFs("p", work / "fs.sock"),
                             ExtraDisk(work / "extra.img"))).argv()
    joined = "\n".join(argv)
    assert "/tmp/x,,readonly=off/w/overlay.qcow2,if=none" in joined
    assert "path=/tmp/x,,readonly=off/w/console.log" in joined
    assert "path=/tmp/x,,readonly=off/w/agent.sock,server=on" in joined
    assert "local,path=/tmp/x,,readonly=off/w/share,mount_tag" in joined
    assert "path=/tmp/x,,readonly=off/w/fs.sock" in joined and "file=/tmp/x,,readonly=off/w/extra.img" in joined
    # Options that qemu does not split keep the path as it is.
    assert _after(_command(pidfile=work / "qemu.pid").argv(), "-pidfile") == [str(work / "qemu.pid")]
    assert escape("a,b,,c") == "a,,b,,,,c"


def test_virtiofsd_source_escapes_commas_for_fuse_options() -> None:
    argv = shares.virtiofsd_argv("/usr/lib/qemu/virtiofsd", shares.Share("share", Path("/w/a,b"), "/g", False),
                                 Path("/w/fs.sock"))
    assert argv[:2] == ["/usr/lib/qemu/virtiofsd", "--socket-path=/w/fs.sock"]
    assert "source=/w/a\\,b" in argv


# --------------------------------------------------------------------------- share modes

def _disk(share_fs: str | None, root: str = "nvme") -> VmDisk:
    return VmDisk(path=Path("/d/disk.img"), kernel=Path("/d/vmlinuz"), initrd=None, key="k",
                  kernel_version="6.1", root_device=root, share_fs=share_fs)


def test_share_mode_follows_the_guest_kernel_and_privileges() -> None:
    assert shares.choose_mode("auto", _disk("9p"), None, 1000).name == "9p"
    assert shares.choose_mode("auto", _disk("virtiofs"), "/usr/lib/qemu/virtiofsd", 0).name == "virtiofs"
    assert shares.choose_mode("auto", _disk("virtiofs"), "/usr/lib/qemu/virtiofsd", 1000).name == "copy"
    assert shares.choose_mode("auto", _disk(None), None, 0).name == "copy"
    assert shares.choose_mode("copy", _disk("9p"), None, 0).name == "copy"
    with pytest.raises(EnvironmentFailure, match="cannot mount virtiofs"):
        shares.choose_mode("virtiofs", _disk("9p"), None, 0)
    with pytest.raises(ValueError, match="share must be"):
        shares.choose_mode("nfs-someday", _disk("9p"), None, 0)


def test_copy_mode_offers_no_share_and_mounts_the_copy_disk(tmp_path: Path) -> None:
    mode = shares.MODES["copy"]
    assert mode.offers_share is False and mode.plan(tmp_path, tmp_path) == []
    assert mode.guest_mounts([], _disk(None))[0] == {"source": "/dev/vda", "target": GUEST_EXTRA,
                                                    "fstype": "ext4", "options": "ro"}
    assert mode.guest_mounts([], _disk(None, root="virtio"))[0]["source"] == "/dev/vdb"
    assert mode.project_dir() == f"{GUEST_EXTRA}/project" and mode.package_dir() == f"{GUEST_EXTRA}/agent"


def test_9p_keeps_guest_ownership_off_the_host_for_the_writable_share(tmp_path: Path) -> None:
    mode = shares.MODES["9p"]
    planned = mode.plan(tmp_path / "project", tmp_path)
    assert [(s.tag, s.readonly) for s in planned][-1] == ("share", False)
    models = {d.tag: d.security_model for d in mode.devices(planned, tmp_path)}  # type: ignore[union-attr]
    assert models["project"] == "none" and models["share"] in ("mapped-xattr", "mapped-file")
    mounts = mode.guest_mounts(planned, _disk("9p"))
    assert mounts[0]["options"].startswith("ro,trans=virtio") and mounts[-1]["fstype"] == "tmpfs"


# --------------------------------------------------------------------------- accelerators

def test_accelerator_order(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    assert boot.accelerators("tcg", "linux", kvm) == (["tcg"], None)
    assert boot.accelerators("auto", "darwin", kvm) == (["hvf", "tcg"], None)
    assert boot.accelerators("auto", "linux", kvm) == (["tcg"], None)
    kvm.write_text("")
    kvm.chmod(0o600)
    assert boot.accelerators("auto", "linux", kvm) == (["kvm", "tcg"], None)


# --------------------------------------------------------------------------- container limits

def test_container_limit_options() -> None:
    assert parse_pids("512") == 512 and parse_pids("0") == 0
    for bad in ("-1", "8", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_pids(bad)
    assert Amount.parse("2g").size == 2 << 30 and Amount.parse("512m").size == 512 << 20
    assert Amount.parse("1.5GiB").size == int(1.5 * (1 << 30)) and Amount.parse("50%").fraction == 0.5
    assert Amount.parse("0") == Amount()
    for bad in ("lots", "150%", "0%", "1k", "-2g"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_amount(bad)
    limits = ContainerLimits.resolve(None, None, None, engine_memory=8 << 30)
    assert limits == ContainerLimits(pids=512, memory_bytes=4 << 30, tmpfs_bytes=2 << 30)
    assert ContainerLimits.resolve(0, "0", "64m", engine_memory=None) == ContainerLimits(None, None, 64 << 20)
