"""The topologies' pieces that need no VM: command lines, mount entries, names, signatures.

What they do in a real VM is tested by ``test_qemu_shares.py`` (9p and NFS into the
qemu environment) and ``test_topologies.py`` (every topology in one pytest session).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from pytest_hostperf.environments import nfs
from pytest_hostperf.environments.qemu import shares
from pytest_hostperf.environments.qemu.cmdline import ExtraDisk, QemuCommand, Virtfs
from pytest_hostperf.environments.qemu.host_shares import HostShare, HostShares, unavailable_reason
from pytest_hostperf.environments.qemu.machine import data_drive
from pytest_hostperf.fingerprint import mount_signature
from pytest_hostperf.options import BUILTIN, parse_budgets, parse_envs, parse_mounts
from pytest_hostperf.targets import MarkerSettings, plan_targets


def _command(**changes: object) -> QemuCommand:
    base = QemuCommand(binary="qemu-system-x86_64", name="hostperf-t", accel="tcg", vcpus=1, memory_mb=512,
                       kernel=Path("/k"), initrd=Path("/i"), root_device="virtio", overlay=Path("/o.qcow2"),
                       console_log=Path("/c.log"), pidfile=Path("/q.pid"), agent_socket=Path("/a.sock"),
                       init="/opt/hostperf/init")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_a_vm_with_forwards_only_has_a_restricted_network() -> None:
    """restrict=on: the forwards (NFS server, engine API) are the guest's only ways in and out."""
    rules = ("hostfwd=tcp:127.0.0.1:5000-10.0.2.15:2375", nfs.guest_forward(40000))
    assert _after(_command(nic_rules=rules).argv(), "-nic") == [
        "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:5000-10.0.2.15:2375,"
        "guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:40000"]
    assert _after(_command().argv(), "-nic") == ["none"]
    # --hostperf-network opens the way out; forwards still apply.
    assert _after(_command(network=True, nic_rules=rules[:1]).argv(), "-nic") == [
        "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:5000-10.0.2.15:2375"]


def test_extra_disks_read_only_or_writable() -> None:
    argv = _command(devices=(ExtraDisk(Path("/copy.img")), data_drive(Path("/d.qcow2")),
                             data_drive(Path("/data.img"), fmt="raw", keep=True))).argv()
    drives = _after(argv, "-drive")
    assert drives[1:] == ["file=/copy.img,if=none,id=extra0,format=raw,readonly=on",
                          "file=/d.qcow2,if=none,id=extra1,format=qcow2,cache=unsafe",
                          "file=/data.img,if=none,id=extra2,format=raw,cache=writeback"]
    # virtio-blk in command-line order after the root disk: /dev/vdb, /dev/vdc, /dev/vdd
    assert _after(argv, "-device")[-3:] == [f"virtio-blk-pci,drive=extra{i}" for i in range(3)]


def test_9p_share_maps_ownership_unless_read_only(tmp_path: Path) -> None:
    writable = shares.Share("share-9p", tmp_path, "/hostperf/share-9p", False)
    device = shares.ninep_device(writable)
    assert device == Virtfs("share-9p", tmp_path, False, "mapped-xattr")   # the temp dir takes user xattrs
    assert "security_model=mapped-xattr" in _after(_command(devices=(device,)).argv(), "-virtfs")[0]
    assert shares.ninep_device(dataclasses.replace(writable, readonly=True)).security_model == "none"
    assert shares.ninep_mount(writable) == {"source": "share-9p", "target": "/hostperf/share-9p", "fstype": "9p",
                                            "options": "trans=virtio,version=9p2000.L,msize=524288"}


def test_host_shares_without_a_server_describe_their_devices_and_mounts(tmp_path: Path) -> None:
    host = HostShares([HostShare("9p", tmp_path / "s9p", "/hostperf/shares/9p")], "t-pieces", "docker@qemu")
    host.prepare()
    assert (tmp_path / "s9p").is_dir() and not host.needs_network and host.nic_rules() == []
    assert [type(d) for d in host.devices(tmp_path)] == [Virtfs]
    assert host.guest_mounts()[0]["target"] == "/hostperf/shares/9p"
    assert host.facts() == {"9p": {"server": "qemu", "security_model": "mapped-xattr"}}
    with pytest.raises(ValueError, match="share kind 'smb'"):
        HostShare("smb", tmp_path, "/x")


def test_unavailable_shares_say_what_to_do() -> None:
    assert "virtiofsd is not installed" in (unavailable_reason("virtiofs", None, 0) or "")
    assert "needs root" in (unavailable_reason("virtiofs", "/usr/lib/qemu/virtiofsd", 1000) or "")
    assert unavailable_reason("9p", None, 1000) is None


def test_nfs_guest_mount_needs_no_mount_helper() -> None:
    export = nfs.NfsExport(Path("/srv"), "t-mount")
    entry = export.guest_mount("/hostperf/share-nfs")
    # mount(2) without mount.nfs: the data string carries the server's address.
    assert entry == {"source": "10.0.2.100:/share", "target": "/hostperf/share-nfs", "fstype": "nfs4",
                     "options": "vers=4.2,proto=tcp,port=2049,hard,timeo=600,retrans=2,sec=sys,addr=10.0.2.100"}
    with pytest.raises(ValueError, match="not a session id"):
        nfs.NfsExport(Path("/srv"), "--evil")


def test_mount_signature_keeps_what_changes_timings() -> None:
    ninep = {"fstype": "9p", "options": "rw,sync,dirsync,relatime,access=client,msize=512000,trans=virtio",
             "outside": {"server": "qemu", "security_model": "mapped-xattr"}}
    assert mount_signature(ninep) == "9p cache=none msize=512000 trans=virtio security_model=mapped-xattr"
    loose = {**ninep, "options": "rw,relatime,cache=loose,msize=512000,trans=virtio"}
    assert mount_signature(loose) != mount_signature(ninep)
    nfs4 = {"fstype": "nfs4", "options": "rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,"
                                         "proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.2.15,addr=10.0.2.100"}
    assert mount_signature(nfs4) == "nfs4 vers=4.2 proto=tcp rsize=1048576 wsize=1048576 hard"
    assert mount_signature({"fstype": "virtiofs", "options": "rw,relatime", "outside": {"cache": "auto"}}) \
        == "virtiofs cache=auto"
    assert mount_signature({"fstype": "ext4", "options": "rw,relatime"}) == "ext4"
    assert mount_signature(None) is None and mount_signature({"fstype": None}) is None


def test_docker_at_qemu_parses_as_an_environment_budget_and_requirement() -> None:
    assert parse_envs("native,docker@qemu") == ("native", "docker@qemu")
    assert parse_budgets("docker@qemu-volume=50,docker@qemu:tcg=60,docker@qemu=70") == {
        "docker@qemu-volume": 50.0, "docker@qemu:tcg": 60.0, "docker@qemu": 70.0}
    with pytest.raises(argparse.ArgumentTypeError, match="docker@qemu-bogus"):
        parse_budgets("docker@qemu-bogus=2")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown environment 'docker@vmware'"):
        parse_envs("docker@vmware")


def test_mounts_on_request_only_when_named() -> None:
    uses_dir = MarkerSettings()
    default = [t.id for t in plan_targets(("native", "qemu"), uses_dir, True)]
    assert default == ["native", "qemu-guest", "qemu-share", "qemu-tmpfs"]   # no 9p kernel, no NFS server
    asked = parse_mounts("share,share-9p,share-nfs,bind-nfs,volume")
    ids = [t.id for t in plan_targets(("native", "docker", "qemu", "docker@qemu"), uses_dir, True, BUILTIN, asked)]
    assert ids == ["native", "docker-volume", "qemu-share", "qemu-share-9p", "qemu-share-nfs",
                   "docker@qemu-bind-nfs", "docker@qemu-volume"]
    marker = MarkerSettings(mounts=("share-9p",))   # the marker wins over the session's list
    assert [t.id for t in plan_targets(("qemu",), marker, True, BUILTIN, asked)] == ["qemu-share-9p"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mount.*share-smb.*known:.*share-nfs"):
        parse_mounts("share-smb")
