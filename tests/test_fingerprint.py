"""Fingerprint collectors against fake /proc + /sys trees, and the real machine."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import pytest

from pytest_hostperf import fingerprint as fp
from pytest_hostperf.fingerprint import _hypervisor

DOCKER_ID = "3f2a9c1d0e4b" + "a" * 52
PODMAN_ID = "9b8c7d6e5f40" + "b" * 52
XEON = "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"
X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx lm"


def make_tree(root: Path, files: Mapping[str, str]) -> str:
    """Write ``files`` ({environment path: content}) under ``root``; return it as str."""
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return str(root)


def cpuinfo(model: str = XEON, cpus: int = 2, hypervisor: bool = False) -> str:
    flags = X86_FLAGS + (" hypervisor" if hypervisor else "")
    blocks = [
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {flags}\n"
        for i in range(cpus)
    ]
    return "\n".join(blocks) + "\n"


def linux(release: str = "6.1.0-18-amd64", hostname: str = "box", arch: str = "x86_64") -> dict[str, str]:
    return {
        "/proc/sys/kernel/osrelease": release + "\n",
        "/proc/sys/kernel/ostype": "Linux\n",
        "/proc/sys/kernel/hostname": hostname + "\n",
        "/proc/sys/kernel/arch": arch + "\n",
        "/proc/meminfo": "MemTotal:        8048128 kB\nMemFree:         1024 kB\n",
        "/sys/devices/system/cpu/online": "0-3\n",
    }


def clocks(current: str, available: str) -> dict[str, str]:
    base = "/sys/devices/system/clocksource/clocksource0"
    return {f"{base}/current_clocksource": current + "\n", f"{base}/available_clocksource": available + " \n"}


def dmi(vendor: str, product: str) -> dict[str, str]:
    return {"/sys/class/dmi/id/sys_vendor": vendor + "\n", "/sys/class/dmi/id/product_name": product + "\n"}


def docker_mountinfo(extra: str = "") -> str:
    """mountinfo of a Docker container on a bare-metal host (cgroup v2, cgroupns private)."""
    hexdir = f"/var/lib/docker/containers/{DOCKER_ID}"
    return (
        "1200 1100 0:52 / / rw,relatime master:1 - overlay overlay rw,"
        "lowerdir=/var/lib/docker/overlay2/l/AB:/var/lib/docker/overlay2/l/CD,"
        "upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/overlay2/x/work\n"
        "1201 1200 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
        "1205 1200 0:60 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate\n"
        f"1210 1200 8:1 {hexdir}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n"
        f"1211 1200 8:1 {hexdir}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n"
        f"1212 1200 8:1 {hexdir}/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw\n"
        "1213 1200 8:1 /var/lib/docker/volumes/data/_data /data rw,relatime - ext4 /dev/sda1 rw\n"
        + extra
    )


def docker_v2(cpu_max: str, memory_max: str) -> dict[str, str]:
    return {
        **linux(hostname=DOCKER_ID[:12]),
        "/.dockerenv": "",
        "/proc/cpuinfo": cpuinfo(cpus=4),
        "/proc/self/cgroup": "0::/\n",
        "/proc/self/mountinfo": docker_mountinfo(),
        "/sys/fs/cgroup/cpu.max": cpu_max + "\n",
        "/sys/fs/cgroup/memory.max": memory_max + "\n",
        **clocks("tsc", "tsc hpet acpi_pm"),
    }


# --- containers and cgroup limits --------------------------------------------------------


def test_docker_cgroup_v2_half_cpu_quota(tmp_path: Path) -> None:
    root = make_tree(tmp_path, docker_v2("50000 100000", "536870912"))
    facts = fp.collect_inside({"volume": "/data", "layer": "/app"}, root=root)
    assert facts["env_kind"] == "container"
    assert facts["container"]["runtime"] == "docker"
    assert facts["container"]["cgroup_path"] == "/"
    assert any("/etc/hostname bind-mounted" in item for item in facts["container"]["evidence"])
    assert facts["cpu_quota"] == 0.5
    assert facts["memory_limit_bytes"] == 512 * 1024 * 1024
    assert facts["cpu_count"] == 4 and facts["cpu_count_logical"] == 4
    assert facts["memory_total_bytes"] == 8048128 * 1024
    assert facts["hypervisor"] == {
        "present": False, "signature": None, "vendor": None, "clocksource": "tsc",
        "dmi_sys_vendor": None, "dmi_product_name": None,
    }
    assert facts["mounts"]["volume"]["kind"] == "local disk (ext4)"
    assert facts["mounts"]["volume"]["source"] == "/dev/sda1"
    assert facts["mounts"]["layer"]["kind"] == "overlayfs (container layer)"
    assert facts["mounts"]["layer"]["mount_point"] == "/"
    # Layer paths of the host say nothing inside and can run to kilobytes.
    assert facts["mounts"]["layer"]["options"] == "rw,relatime"
    assert facts["hostname"] == DOCKER_ID[:12]


def test_cgroup_v2_without_limits_is_none(tmp_path: Path) -> None:
    root = make_tree(tmp_path, docker_v2("max 100000", "max"))
    facts = fp.collect_inside(root=root)
    assert facts["env_kind"] == "container"
    assert facts["cpu_quota"] is None
    assert facts["memory_limit_bytes"] is None


@pytest.mark.parametrize("where", ["container view", "host view"])
def test_docker_cgroup_v1_quota(tmp_path: Path, where: str) -> None:
    cgroup = f"/docker/{DOCKER_ID}"
    # Inside a v1 container the cgroup mount's root already is the container's cgroup;
    # without a cgroup namespace the files sit under the full path. Both must work.
    sub = "" if where == "container view" else cgroup
    files = {
        **linux(),
        "/proc/cpuinfo": cpuinfo(cpus=4),
        "/proc/self/cgroup": f"12:memory:{cgroup}\n4:cpu,cpuacct:{cgroup}\n1:name=systemd:{cgroup}\n",
        # No mountinfo: the /proc/self/mounts fallback must be enough.
        "/proc/self/mounts": (
            "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup ro,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n"
            "cgroup /sys/fs/cgroup/memory cgroup ro,nosuid,nodev,noexec,relatime,memory 0 0\n"
        ),
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        f"/sys/fs/cgroup/cpu,cpuacct{sub}/cpu.cfs_quota_us": "150000\n",
        f"/sys/fs/cgroup/cpu,cpuacct{sub}/cpu.cfs_period_us": "100000\n",
        # v1 spells "unlimited" as PAGE_COUNTER_MAX pages.
        f"/sys/fs/cgroup/memory{sub}/memory.limit_in_bytes": "9223372036854771712\n",
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["container"]["runtime"] == "docker"
    assert facts["container"]["cgroup_path"] == cgroup
    assert facts["cpu_quota"] == 1.5
    assert facts["memory_limit_bytes"] is None


def test_limit_on_a_parent_cgroup_applies(tmp_path: Path) -> None:
    # A systemd slice with CPUQuota=100% and MemoryMax=1G, the service itself unlimited.
    files = {
        **linux(),
        "/proc/cpuinfo": cpuinfo(),
        "/proc/self/cgroup": "0::/bench.slice/run.service\n",
        "/proc/self/mounts": "/dev/sda1 / ext4 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        "/sys/fs/cgroup/bench.slice/cpu.max": "100000 100000\n",
        "/sys/fs/cgroup/bench.slice/memory.max": "1073741824\n",
        "/sys/fs/cgroup/bench.slice/run.service/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/bench.slice/run.service/memory.max": "max\n",
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["env_kind"] == "native"
    assert facts["cpu_quota"] == 1.0
    assert facts["memory_limit_bytes"] == 1 << 30


def test_podman_rootless(tmp_path: Path) -> None:
    userdata = f"/home/me/.local/share/containers/storage/overlay-containers/{PODMAN_ID}/userdata"
    files = {
        **linux(),
        "/proc/cpuinfo": cpuinfo(),
        "/run/.containerenv": 'engine="podman-4.9.3"\nname="bench"\nrootless=1\n',
        "/proc/self/cgroup": "0::/\n",
        "/proc/self/mountinfo": (
            "600 500 0:40 / / rw,relatime - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0\n"
            f"610 600 0:41 {userdata}/hostname /etc/hostname rw - tmpfs tmpfs rw\n"
        ),
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["env_kind"] == "container"
    assert facts["container"]["runtime"] == "podman"
    assert facts["mounts"] == {}


def test_kubernetes_cgroup_path_names_the_runtime(tmp_path: Path) -> None:
    files = {
        **linux(),
        "/proc/self/cgroup": "11:cpu,cpuacct:/kubepods/burstable/pod1234/" + DOCKER_ID + "\n",
        "/proc/self/mounts": "overlay / overlay rw 0 0\n",
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["container"]["runtime"] == "kubernetes"


def test_stale_dockerenv_on_a_vm_disk_is_not_a_container(tmp_path: Path) -> None:
    # Seen on our CI machines: a VM whose ext4 root disk was made from a Docker image.
    files = {
        **linux(release="6.18.44-fc"),
        "/.dockerenv": "",
        "/proc/cpuinfo": cpuinfo(model="AMD EPYC", hypervisor=True),
        "/proc/self/cgroup": "1:cpu:/\n0::/\n",
        "/proc/self/mounts": "/dev/vda / ext4 rw,relatime,discard 0 0\nproc /proc proc rw 0 0\n",
        **clocks("tsc", "tsc kvm-clock"),
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["container"] is None
    assert facts["env_kind"] == "vm"
    assert facts["hypervisor"]["vendor"] == "KVM"
    assert any("/.dockerenv ignored" in note and "/dev/vda" in note for note in facts["notes"])


# --- mounts ------------------------------------------------------------------------------


def test_docker_desktop_virtiofs_bind_mount(tmp_path: Path) -> None:
    # Docker Desktop on Apple silicon: arm64 cpuinfo has no model name and no
    # hypervisor flag, but the linuxkit kernel says it is Docker Desktop's VM.
    arm = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x61\nCPU part\t: 0x039\n\n"
    files = {
        **linux(release="6.10.14-linuxkit", arch="aarch64"),
        "/.dockerenv": "",
        "/proc/cpuinfo": arm,
        "/proc/self/cgroup": "0::/\n",
        "/proc/self/mounts": (
            "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
            "/run/host_mark/Users /work fakeowner rw,nosuid,nodev,relatime,fakeowner 0 0\n"
            "/dev/vda1 /data ext4 rw,relatime,discard 0 0\n"
            "tmpfs /scratch tmpfs rw,nosuid,nodev,size=65536k 0 0\n"
        ),
    }
    facts = fp.collect_inside(
        {"bind": "/work/project", "volume": "/data/x", "tmpfs": "/scratch", "layer": "/tmp"},
        root=make_tree(tmp_path, files),
    )
    assert facts["env_kind"] == "container-in-vm"
    assert facts["machine"] == "aarch64"
    assert facts["cpu_model"] == "ARM implementer 0x61 part 0x039"
    assert facts["hypervisor"]["present"] is True
    bind = facts["mounts"]["bind"]
    assert bind == {
        "path": "/work/project", "mount_point": "/work", "fstype": "fakeowner",
        "source": "/run/host_mark/Users", "options": "rw,nosuid,nodev,relatime,fakeowner",
        "kind": "Docker Desktop VirtioFS",
    }
    assert facts["mounts"]["volume"]["kind"] == "local disk (ext4)"
    assert facts["mounts"]["tmpfs"]["kind"] == "tmpfs (memory)"
    assert facts["mounts"]["layer"]["kind"] == "overlayfs (container layer)"


def test_wsl2_drvfs_mount(tmp_path: Path) -> None:
    files = {
        **linux(release="5.15.153.1-microsoft-standard-WSL2"),
        "/proc/cpuinfo": cpuinfo(hypervisor=True),
        "/proc/self/mounts": (
            "/dev/sdc / ext4 rw,relatime,discard,errors=remount-ro,data=ordered 0 0\n"
            # The kernel escapes the backslash of "C:\" as \134.
            "C:\\134 /mnt/c 9p rw,noatime,dirsync,aname=drvfs;path=C:\\134;uid=1000;gid=1000;"
            "symlinkroot=/mnt/,mmap,access=client,msize=262144,trans=virtio 0 0\n"
        ),
        **clocks("hyperv_clocksource_tsc_page", "hyperv_clocksource_tsc_page acpi_pm"),
    }
    facts = fp.collect_inside(
        {"windows": "/mnt/c/Users/me/project", "linux": "/home/me/project"}, root=make_tree(tmp_path, files)
    )
    assert facts["env_kind"] == "wsl"
    assert facts["hypervisor"]["vendor"] == "Hyper-V"
    windows = facts["mounts"]["windows"]
    assert windows["kind"] == "WSL2 drvfs (Windows drive)"
    assert windows["source"] == "C:\\"
    assert windows["mount_point"] == "/mnt/c"
    assert facts["mounts"]["linux"]["kind"] == "local disk (ext4)"


def test_mount_resolution_longest_prefix_stacking_escapes_symlinks(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {
        "/proc/self/mounts": (
            "/dev/sda1 / ext4 rw 0 0\n"
            "/dev/sdb1 /srv xfs rw 0 0\n"
            "/dev/sdb1 /srv/data xfs rw 0 0\n"
            "tmpfs /srv/data tmpfs rw 0 0\n"           # mounted over the xfs one: it wins
            "server:/export /srv/database nfs4 rw 0 0\n"  # a sibling, not a prefix of /srv/data
            "share /mnt/my\\040share virtiofs rw 0 0\n"
        ),
        "/srv/data/real/.keep": "",
    })
    os.symlink("srv/data/real", tmp_path / "link")  # relative, so it stays in the tree
    mounts = fp.collect_inside(
        {"a": "/srv/data/x", "b": "/srv/other", "c": "/link", "d": "/mnt/my share/p", "e": "/srv/database"},
        root=root,
    )["mounts"]
    assert mounts["a"]["fstype"] == "tmpfs"
    assert mounts["b"]["fstype"] == "xfs"
    assert mounts["c"]["path"] == "/srv/data/real" and mounts["c"]["fstype"] == "tmpfs"
    assert mounts["d"]["kind"] == "virtiofs host share" and mounts["d"]["mount_point"] == "/mnt/my share"
    assert mounts["e"]["kind"] == "NFS (network)"


@pytest.mark.parametrize(("fstype", "options", "source", "label"), [
    ("fuse.osxfs", "rw", "osxfs", "Docker Desktop osxfs (macOS)"),
    ("fuse.grpcfuse", "rw,user_id=0", "grpcfuse", "Docker Desktop gRPC FUSE"),
    ("fakeowner", "rw,fakeowner", "/run/host_mark/Users", "Docker Desktop VirtioFS"),
    ("9p", "rw,aname=drvfs;path=C:\\;uid=1000,trans=virtio", "C:\\", "WSL2 drvfs (Windows drive)"),
    ("virtiofs", "rw", "C:\\", "WSL2 drvfs (Windows drive)"),
    ("9p", "rw,trans=virtio,version=9p2000.L", "hostshare", "9p host share"),
    ("virtiofs", "rw", "mount0", "virtiofs host share"),
    ("overlay", "rw,lowerdir=/a", "overlay", "overlayfs (container layer)"),
    ("tmpfs", "rw", "tmpfs", "tmpfs (memory)"),
    ("ext4", "rw", "/dev/sda1", "local disk (ext4)"),
    ("xfs", "rw", "/dev/nvme0n1p1", "local disk (xfs)"),
    ("btrfs", "rw", "/dev/sda2", "local disk (btrfs)"),
    ("fuse.sshfs", "rw", "host:/src", "sshfs (network)"),
    ("fuse.rclone", "rw", "remote:", "FUSE (rclone)"),
    ("rootfs", "rw", "rootfs", "initramfs (memory)"),
    ("zonefs", "rw", "/dev/sdz", "zonefs"),
    ("", "", "", "unknown"),
])
def test_classify_filesystem(fstype: str, options: str, source: str, label: str) -> None:
    assert fp.classify_filesystem(fstype, options, source) == label


# --- hypervisors -------------------------------------------------------------------------


def test_qemu_tcg_guest(tmp_path: Path) -> None:
    # As a Debian cloud kernel sees `qemu-system-x86_64 -accel tcg` (TSC unstable -> hpet).
    files = {
        **linux(hostname="(none)"),
        "/proc/cpuinfo": cpuinfo(model="QEMU Virtual CPU version 2.5+", hypervisor=True),
        **dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)"),
        **clocks("hpet", "hpet acpi_pm"),
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["env_kind"] == "vm"
    assert facts["cpu_model"] == "QEMU Virtual CPU version 2.5+"
    assert facts["hostname"] is None  # the kernel's "(none)" placeholder
    assert facts["hypervisor"] == {
        # No CPUID on a fake tree: the real CPU must not leak into it.
        "present": True, "signature": None, "vendor": "QEMU TCG", "clocksource": "hpet",
        "dmi_sys_vendor": "QEMU", "dmi_product_name": "Standard PC (i440FX + PIIX, 1996)",
    }


@pytest.mark.parametrize(("current", "available"), [
    ("kvm-clock", "kvm-clock tsc acpi_pm"),
    # Newer guest kernels prefer a stable TSC; kvm-clock is still offered.
    ("tsc", "tsc kvm-clock acpi_pm"),
])
def test_kvm_guest(tmp_path: Path, current: str, available: str) -> None:
    files = {
        **linux(),
        "/proc/cpuinfo": cpuinfo(hypervisor=True),
        **dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)"),
        **clocks(current, available),
    }
    hypervisor = fp.collect_inside(root=make_tree(tmp_path, files))["hypervisor"]
    assert hypervisor["present"] is True
    assert hypervisor["vendor"] == "KVM"
    assert hypervisor["clocksource"] == current


def test_bare_metal_host(tmp_path: Path) -> None:
    files = {
        **linux(),
        "/proc/cpuinfo": cpuinfo(model="Intel(R) Xeon(R)  Gold 6230  CPU @ 2.10GHz", cpus=4),
        "/proc/self/status": "Name:\tpython3\nCpus_allowed:\t5\nCpus_allowed_list:\t0,2\n",
        "/proc/self/cgroup": "0::/user.slice/user-1000.slice/session-3.scope\n",
        "/proc/self/mounts": "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n",
        **dmi("Dell Inc.", "PowerEdge R640"),
        **clocks("tsc", "tsc hpet acpi_pm"),
    }
    facts = fp.collect_inside(root=make_tree(tmp_path, files))
    assert facts["env_kind"] == "native"
    assert facts["container"] is None
    assert facts["hypervisor"]["present"] is False and facts["hypervisor"]["vendor"] is None
    assert facts["cpu_model"] == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"  # spaces collapsed
    assert facts["cpu_count_logical"] == 4
    assert facts["cpu_count"] == 2  # the affinity mask, not the machine
    assert facts["notes"] == []


@pytest.mark.parametrize(("signature", "vendor"), [
    ("KVMKVMKVM", "KVM"),
    ("TCGTCGTCGTCG", "QEMU TCG"),
    ("Microsoft Hv", "Hyper-V"),
    ("VMwareVMware", "VMware"),
    ("XenVMMXenVMM", "Xen"),
    ("Apple VZ", "Apple Virtualization"),
    ("NewHypervisor", "NewHypervisor"),
    (None, None),
])
def test_vendor_from_signature(signature: str | None, vendor: str | None) -> None:
    assert fp.vendor_from_signature(signature) == vendor


def test_cpuid_signature_wins_over_file_heuristics(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {**dmi("QEMU", "Standard PC"), **clocks("kvm-clock", "kvm-clock")})
    flags = frozenset({"hypervisor"})
    result = _hypervisor.collect_hypervisor(root, flags, None, signature_probe=lambda: "TCGTCGTCGTCG")
    assert (result["signature"], result["vendor"]) == ("TCGTCGTCGTCG", "QEMU TCG")

    def broken() -> str | None:
        raise RuntimeError("no CPUID here")

    # A failing probe falls back to the files instead of failing the run.
    result = _hypervisor.collect_hypervisor(root, flags, None, signature_probe=broken)
    assert (result["signature"], result["vendor"]) == (None, "KVM")


# --- nothing there, or nonsense ----------------------------------------------------------


def test_empty_root_gives_nones_not_exceptions(tmp_path: Path) -> None:
    facts = fp.collect_inside({"bind": "/work"}, root=str(tmp_path))
    for key in ("cpu_model", "cpu_count", "cpu_count_logical", "memory_total_bytes", "os", "kernel",
                "hostname", "container", "cpu_quota", "memory_limit_bytes"):
        assert facts[key] is None, key
    assert facts["env_kind"] == "native"
    assert facts["hypervisor"] == {
        "present": False, "signature": None, "vendor": None, "clocksource": None,
        "dmi_sys_vendor": None, "dmi_product_name": None,
    }
    assert facts["mounts"] == {"bind": {
        "path": "/work", "mount_point": None, "fstype": None, "source": None, "options": None, "kind": None,
    }}
    assert facts["python_version"] == platform.python_version()
    json.dumps(facts)
    fp.summary(facts)
    fp.fingerprint_id(fp.match_view(facts))


def test_odd_files_do_not_raise(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {
        "/proc/cpuinfo": "\x00\xff garbage\n:::\nflags\nmodel name\t:\n",
        "/proc/meminfo": "MemTotal: lots kB\n",
        "/proc/self/status": "Cpus_allowed_list:\tx-y\n",
        "/proc/self/cgroup": "nonsense\n1:2\n0::\n",
        "/proc/self/mountinfo": "garbage - \n1 2 3\n - - -\n",
        "/proc/mounts": "onlyone\n",
        "/sys/fs/cgroup/cpu.max": "banana 0\n",
        "/sys/fs/cgroup/memory.max": "-5\n",
        "/sys/devices/system/cpu/online": "zz\n",
        "/sys/class/dmi/id/sys_vendor": "\n",
        "/run/.containerenv/x": "",  # a directory where a file was expected
    })
    (tmp_path / "proc/self/mounts").mkdir(parents=True)
    facts = fp.collect_inside({"x": "/a/b"}, root=root)
    assert facts["cpu_quota"] is None and facts["memory_limit_bytes"] is None
    assert facts["memory_total_bytes"] is None and facts["cpu_count_logical"] is None
    json.dumps(facts)


# --- engines -----------------------------------------------------------------------------

DOCKER_DESKTOP_INFO = {
    "ID": "b0c2f6d8-3a5e-4e2b-9a43-1c1d1f0e2a31", "Name": "docker-desktop",
    "OperatingSystem": "Docker Desktop", "OSType": "linux", "Architecture": "aarch64",
    "KernelVersion": "6.10.14-linuxkit", "ServerVersion": "27.3.1", "Driver": "overlayfs",
    "CgroupDriver": "cgroupfs", "CgroupVersion": "2", "NCPU": 8, "MemTotal": 8217473024,
    "SecurityOptions": ["name=seccomp,profile=unconfined", "name=cgroupns"],
    "Labels": ["com.docker.desktop.address=unix:///Users/me/Library/Containers/com.docker.docker/Data/docker-cli.sock"],
}
DOCKER_DESKTOP_VERSION = {
    "Platform": {"Name": "Docker Desktop 4.36.0 (175267)"}, "Version": "27.3.1", "Arch": "arm64",
    "Components": [{"Name": "Engine", "Version": "27.3.1"}, {"Name": "containerd", "Version": "1.7.21"}],
}
ENGINE_INFO = {  # what `docker info` says on our own CI machines
    "Name": "vm", "OperatingSystem": "Debian GNU/Linux 12 (bookworm)", "KernelVersion": "6.18.44-fc-v669",
    "ServerVersion": "20.10.24+dfsg1", "Driver": "overlay2", "CgroupVersion": "1", "NCPU": 2,
    "MemTotal": 25276502016, "SecurityOptions": ["name=seccomp,profile=default"], "Architecture": "x86_64",
}


def test_classify_docker_desktop() -> None:
    engine = fp.classify_engine(DOCKER_DESKTOP_INFO, DOCKER_DESKTOP_VERSION)
    assert engine == {
        "kind": "Docker Desktop", "rootless": False, "version": "27.3.1", "storage_driver": "overlayfs",
        "kernel": "6.10.14-linuxkit", "operating_system": "Docker Desktop", "cgroup_version": "2",
        "cpus": 8, "memory_bytes": 8217473024, "architecture": "aarch64",
        "platform": "Docker Desktop 4.36.0 (175267)",
    }
    # Older Docker Desktop said "Alpine Linux"; the linuxkit kernel still gives it away.
    old = {"OperatingSystem": "Alpine Linux v3.14", "KernelVersion": "5.10.47-linuxkit", "Name": "x"}
    assert fp.classify_engine(old)["kind"] == "Docker Desktop"


@pytest.mark.parametrize(("info", "kind"), [
    ({"Name": "colima", "OperatingSystem": "Ubuntu 24.04.1 LTS", "KernelVersion": "6.8.0-50-generic"}, "colima"),
    ({"Name": "colima-work", "OperatingSystem": "Ubuntu 24.04.1 LTS"}, "colima"),
    ({"Name": "lima-docker", "OperatingSystem": "Ubuntu 24.10"}, "Lima"),
    ({"Name": "lima-rancher-desktop", "OperatingSystem": "Alpine Linux v3.20"}, "Rancher Desktop"),
    ({"Name": "DESKTOP-1", "OperatingSystem": "Rancher Desktop WSL Distribution"}, "Rancher Desktop"),
    ({"Name": "orbstack", "OperatingSystem": "OrbStack",
      "KernelVersion": "6.11.10-orbstack-00280-g1304bd068592"}, "OrbStack"),
    (ENGINE_INFO, "Docker Engine"),
    ({}, "Docker Engine"),
])
def test_classify_engine_kinds(info: dict, kind: str) -> None:
    assert fp.classify_engine(info)["kind"] == kind


def test_classify_rootless_docker() -> None:
    info = {**ENGINE_INFO, "SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]}
    engine = fp.classify_engine(info)
    assert engine["kind"] == "Docker Engine" and engine["rootless"] is True
    assert fp.classify_engine(ENGINE_INFO)["rootless"] is False


def test_classify_podman_compat_and_native_shapes() -> None:
    compat_info = {
        "Name": "fedora", "OperatingSystem": "fedora", "ServerVersion": "5.3.1", "Driver": "overlay",
        "KernelVersion": "6.11.4-301.fc41.x86_64", "NCPU": 4, "MemTotal": 16649138176, "CgroupVersion": "2",
        "SecurityOptions": ["name=seccomp,profile=/usr/share/containers/seccomp.json", "name=rootless"],
    }
    compat_version = {
        "Platform": {"Name": "linux/amd64/fedora-41"}, "Version": "5.3.1",
        "Components": [{"Name": "Podman Engine", "Version": "5.3.1", "Details": {"APIVersion": "5.3.1"}}],
    }
    engine = fp.classify_engine(compat_info, compat_version)
    assert (engine["kind"], engine["rootless"], engine["version"]) == ("Podman", True, "5.3.1")

    native = {
        "host": {
            "arch": "amd64", "cgroupVersion": "v2", "cpus": 4, "kernel": "6.11.4-301.fc41.x86_64",
            "memTotal": 16649138176, "distribution": {"distribution": "fedora", "version": "41"},
            "security": {"rootless": True},
        },
        "store": {"graphDriverName": "overlay"},
        "version": {"Version": "5.3.1", "OsArch": "linux/amd64"},
    }
    engine = fp.classify_engine(native)
    assert engine == {
        "kind": "Podman", "rootless": True, "version": "5.3.1", "storage_driver": "overlay",
        "kernel": "6.11.4-301.fc41.x86_64", "operating_system": "fedora 41", "cgroup_version": "2",
        "cpus": 4, "memory_bytes": 16649138176, "architecture": "amd64", "platform": "linux/amd64",
    }


def test_classify_engine_tolerates_odd_values() -> None:
    odd = {"SecurityOptions": None, "NCPU": "many", "MemTotal": True, "Labels": "x", "Name": 3}
    engine = fp.classify_engine(odd, {"Platform": "?", "Components": "?"})
    assert engine["kind"] == "Docker Engine"
    assert engine["cpus"] is None and engine["memory_bytes"] is None and engine["rootless"] is False


# --- match keys, ids, summary ------------------------------------------------------------


def _docker_facts(tmp_path: Path) -> dict:
    return fp.collect_inside({"bind": "/data"}, root=make_tree(tmp_path, docker_v2("50000 100000", "max")))


def test_match_view_is_flat_and_complete(tmp_path: Path) -> None:
    facts = _docker_facts(tmp_path)
    view = fp.match_view(facts, {"engine": {"kind": "Docker Engine", "storage_driver": "overlay2"}}, mount="bind")
    assert set(fp.MATCH_KEYS) <= set(view)
    assert view["container.runtime"] == "docker" and view["hypervisor.vendor"] is None
    assert view["cpu_quota"] == 0.5
    assert view["engine.kind"] == "Docker Engine" and view["engine.storage_driver"] == "overlay2"
    assert view["mount.fstype"] == "ext4"
    assert fp.match_view({})["cpu_model"] is None
    for context in ("kernel", "hostname", "memory_total_bytes", "python_version"):
        assert context not in view


def test_fingerprint_id_is_stable(tmp_path: Path) -> None:
    view = {"machine": "x86_64", "cpu_model": "AMD EPYC", "cpu_count": 2, "cpu_quota": None, "env_kind": "native"}
    # Pinned: a change here orphans every stored baseline, so it must be deliberate.
    assert fp.fingerprint_id(view) == PINNED_ID
    assert fp.fingerprint_id(dict(reversed(list(view.items())))) == PINNED_ID
    facts = _docker_facts(tmp_path)
    round_tripped = json.loads(json.dumps(facts))
    assert fp.fingerprint_id(fp.match_view(round_tripped)) == fp.fingerprint_id(fp.match_view(facts))
    assert re.fullmatch(r"[0-9a-f]{12}", fp.fingerprint_id(fp.match_view(facts)))
    # A whole fingerprint is reduced to its view instead of hashing the hostname.
    assert fp.fingerprint_id(facts) == fp.fingerprint_id(fp.match_view(facts))

    # The canonical form is plain sorted compact JSON, checkable by hand.
    canonical = '{"cpu_count":2,"cpu_model":"AMD EPYC","cpu_quota":null,"env_kind":"native","machine":"x86_64"}'
    assert PINNED_ID == hashlib.sha256(canonical.encode()).hexdigest()[:12]


PINNED_ID = "923abe8332e7"


def test_fingerprint_id_follows_match_keys_only(tmp_path: Path) -> None:
    facts = _docker_facts(tmp_path)
    base = fp.fingerprint_id(fp.match_view(facts))
    context_changed = {**facts, "hostname": "other", "kernel": "6.12.0", "memory_total_bytes": 1}
    assert fp.fingerprint_id(fp.match_view(context_changed)) == base
    quota_changed = {**facts, "cpu_quota": 1.0}
    assert fp.fingerprint_id(fp.match_view(quota_changed)) != base
    tcg = {**facts, "hypervisor": {**facts["hypervisor"], "vendor": "QEMU TCG"}}
    assert fp.fingerprint_id(fp.match_view(tcg)) != base
    assert fp.fingerprint_id(fp.match_view(facts, {"qemu.accel": "tcg"})) != base


def test_mismatches_lists_the_differing_keys(tmp_path: Path) -> None:
    facts = _docker_facts(tmp_path)
    other = {**facts, "cpu_quota": 2.0, "hostname": "elsewhere",
             "hypervisor": {**facts["hypervisor"], "vendor": "KVM"}}
    assert fp.mismatches(fp.match_view(facts), fp.match_view(other)) == [
        ("cpu_quota", 0.5, 2), ("hypervisor.vendor", None, "KVM"),
    ]
    assert fp.mismatches(facts, facts) == []
    a = fp.match_view(facts, {"engine.kind": "Docker Desktop"})
    b = fp.match_view(facts, {"engine.kind": "OrbStack"})
    assert fp.mismatches(a, b) == [("engine.kind", "Docker Desktop", "OrbStack")]
    assert fp.mismatches(a, fp.match_view(facts)) == [("engine.kind", "Docker Desktop", None)]


def test_summary_reads_like_a_sentence(tmp_path: Path) -> None:
    facts = _docker_facts(tmp_path)
    assert fp.summary(facts) == (
        f"container (docker) · {XEON} · 4 CPUs (quota 0.5) · Linux 6.1 · "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    assert fp.summary({}) == "unknown"


# --- the real machine --------------------------------------------------------------------


def test_collect_inside_on_this_machine(tmp_path: Path) -> None:
    facts = fp.collect_inside({"tmp": str(tmp_path)})
    assert json.loads(json.dumps(facts)) == facts
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert isinstance(facts["cpu_count"], int) and facts["cpu_count"] >= 1
    if hasattr(os, "sched_getaffinity"):
        assert facts["cpu_count"] == len(os.sched_getaffinity(0))
    assert isinstance(facts["cpu_count_logical"], int) and facts["cpu_count_logical"] >= facts["cpu_count"]
    assert isinstance(facts["memory_total_bytes"], int) and facts["memory_total_bytes"] > 0
    assert facts["os"] == platform.system()
    assert facts["kernel"] == platform.release()
    assert facts["machine"] == platform.machine()
    assert facts["python_version"] == platform.python_version()
    assert facts["python_minor"] == "{}.{}".format(*sys.version_info[:2])
    assert facts["env_kind"] in ("native", "container", "vm", "container-in-vm", "wsl")
    assert isinstance(facts["hypervisor"]["present"], bool)
    assert facts["cpu_quota"] is None or isinstance(facts["cpu_quota"], float)
    mount = facts["mounts"]["tmp"]
    assert mount["path"] == os.path.realpath(tmp_path)
    with open("/proc/self/mounts") as handle:
        real_types = {line.split()[2] for line in handle if len(line.split()) > 2}
    assert mount["fstype"] in real_types
    assert mount["kind"] == fp.classify_filesystem(mount["fstype"], mount["options"], mount["source"])
    assert os.path.realpath(tmp_path).startswith(mount["mount_point"])
    assert " · " in fp.summary(facts)


def _has_hypervisor_flag() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("flags") and " hypervisor" in line for line in handle)
    except OSError:
        return False


def test_cpuid_signature_on_this_machine() -> None:
    signature = fp.cpuid_hypervisor_signature()
    runnable = sys.platform.startswith("linux") and platform.machine() == "x86_64"
    if runnable and _has_hypervisor_flag():
        assert signature and signature.isprintable()
        assert fp.collect_inside()["hypervisor"]["signature"] == signature
    else:
        assert signature is None


def test_agent_side_import_is_stdlib_only() -> None:
    # The agent imports this inside bare containers and VMs: no psutil, no pytest there.
    code = (
        "import sys\n"
        "from pytest_hostperf import fingerprint\n"
        "fingerprint.collect_inside({'here': '.'})\n"
        "bad = sorted(m for m in ('psutil', 'pytest', '_pytest', 'docker') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    package_parent = str(Path(fp.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": package_parent}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_collect_host_adds_extras() -> None:
    host = fp.collect_host()
    assert host["cpu_count_physical"] is None or host["cpu_count_physical"] >= 1
    assert host["cpu_freq_max_mhz"] is None or host["cpu_freq_max_mhz"] > 0
    assert "cpu_governor" in host
    assert "boot_time" not in host
