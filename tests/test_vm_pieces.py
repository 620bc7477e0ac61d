"""Command-line pieces of the VM topologies (pure: nothing is booted here).

What these pieces do in a real VM is tested by test_vm_shares.py and test_docker_in_vm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_hostperf.environments import nfs, vmshares
from pytest_hostperf.vm.guest import GuestVM, LaunchSpec


def test_9p_share_maps_ownership_and_can_be_read_only(tmp_path: Path) -> None:
    flag, value = vmshares.ninep_args(tmp_path, "share", readonly=True)
    assert flag == "-virtfs"
    assert value == f"local,path={tmp_path.resolve()},mount_tag=share,security_model=mapped-xattr,id=share,readonly=on"
    mount = vmshares.ninep_mount("share", "/hostperf/share", readonly=True, cache="mmap")
    assert mount == {"source": "share", "target": "/hostperf/share", "fstype": "9p",
                     "options": "trans=virtio,version=9p2000.L,msize=524288,cache=mmap,ro"}


@pytest.mark.parametrize("tag", ["", "with space", "x" * 32, "a,b"])
def test_bad_9p_tag_is_named(tmp_path: Path, tag: str) -> None:
    with pytest.raises(ValueError, match="mount tag"):
        vmshares.ninep_args(tmp_path, tag)


def test_9p_path_with_comma_is_refused_with_the_fix(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    odd.mkdir()
    with pytest.raises(ValueError, match="comma") as info:
        vmshares.ninep_args(odd, "share")
    assert str(odd) in str(info.value)


def test_unknown_9p_cache_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="none, mmap, loose"):
        vmshares.ninep_mount("share", "/x", cache="fscache-ish")


def test_nfs_nic_has_no_way_out_but_the_forwards() -> None:
    nic = nfs.qemu_nic(40000, "hostfwd=tcp:127.0.0.1:5000-10.0.2.15:2375")
    assert nic.split(",") == ["user", "model=virtio-net-pci", "restrict=on",
                              "guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:40000",
                              "hostfwd=tcp:127.0.0.1:5000-10.0.2.15:2375"]


def test_guest_vm_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))   # the work dir goes under the session root
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with GuestVM(tmp_path / "disk.img", tmp_path / "vmlinuz", tmp_path / "initrd.img", session_id="t 1") as vm:
        argv = vm.argv()
        assert vm.workdir is not None and vm.workdir.parent.parent == tmp_path
        assert (vm.workdir / "owner.json").is_file()   # what the qemu sweep reads
        assert argv[argv.index("-nic") + 1] == "none"  # no network unless a topology adds one
        assert argv[argv.index("-initrd") + 1] == str(tmp_path / "initrd.img")
        assert "virtio-blk-pci,drive=root" in argv
        append = argv[argv.index("-append") + 1]
        assert "root=/dev/vda" in append and "init=/opt/hostperf/init" in append
        assert "hostperf-t_1" in argv[argv.index("-name") + 1]
        workdir = vm.workdir
    assert not workdir.exists()
    cloud = GuestVM(tmp_path / "disk.img", tmp_path / "vmlinuz", None, session_id="t2",
                    qemu_args=["-nic", "user,restrict=on"])
    try:
        argv = cloud.argv()
        assert "-initrd" not in argv and "nvme,drive=root,serial=hostperf-root" in argv
        assert argv.count("-nic") == 1
    finally:
        cloud.stop()


def test_launch_message_is_one_json_line() -> None:
    message = LaunchSpec(["/bin/true"], mounts=[{"source": "a", "target": "/b", "fstype": "9p", "options": ""}]).message()
    assert message.startswith(b"@@hostperf-launch@@ {") and message.endswith(b"}\n") and message.count(b"\n") == 1
