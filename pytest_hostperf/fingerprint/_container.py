"""Whether we run in a container, which runtime made it, and its cgroup limits.

A single marker file is not trusted on its own: ``/.dockerenv`` survives when an image
is turned into a VM's root disk (this very project's CI machines have one on an ext4
``/dev/vda`` root), so it only counts when the root filesystem is a container layer.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pytest_hostperf.fingerprint import _files

# Runtime from cgroup paths (/proc/self/cgroup), most specific first.
_CGROUP_RUNTIMES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"kubepods"), "kubernetes"),
    (re.compile(r"libpod[-_]|/libpod_parent/"), "podman"),
    (re.compile(r"docker[-/][0-9a-f]{12,}|/actions_job/"), "docker"),
    (re.compile(r"cri-containerd-|/containerd/"), "containerd"),
    (re.compile(r"crio-"), "cri-o"),
    (re.compile(r"(^|/)lxc[./]|lxc\.payload"), "lxc"),
)

# Runtime from where /etc/hostname, /etc/hosts or /etc/resolv.conf are bind-mounted
# from (mountinfo "root" field): every runtime writes them per container on the host.
_BIND_RUNTIMES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"/kubelet/pods/|io\.containerd\.grpc\.v1\.cri/sandboxes/"), "kubernetes"),
    (re.compile(r"overlay-containers/[0-9a-f]{12,}/userdata/|/libpod/"), "podman"),
    (re.compile(r"/containers/[0-9a-f]{64}/(hostname|hosts|resolv\.conf)$"), "docker"),
)
_BIND_TARGETS: Final = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})

# Root filesystems that only a container gives you.
_CONTAINER_ROOT_FS: Final = frozenset({"overlay", "fuse-overlayfs", "fuse.fuse-overlayfs", "aufs"})

# cgroup v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages).
_UNLIMITED_BYTES: Final = 1 << 60


def cgroup_paths(root: str) -> dict[str, str]:
    """This process's cgroup per controller from ``/proc/self/cgroup``; v2 under ``""``."""
    text = _files.read_text(root, "/proc/self/cgroup") or ""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":
            paths[""] = path
            continue
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _environ_container(root: str) -> str | None:
    # systemd-nspawn, podman and LXC announce themselves with container=... in the
    # environment of PID 1 (readable by root only) and usually of its children.
    for path in ("/proc/1/environ", "/proc/self/environ"):
        text = _files.read_text(root, path)
        for item in (text or "").split("\0"):
            if item.startswith("container="):
                value = item.partition("=")[2].strip()
                if value:
                    return value
    return None


def detect_container(root: str, mounts: list[_files.MountEntry]) -> tuple[dict[str, Any] | None, list[str]]:
    """``({runtime, cgroup_path, evidence}, notes)``; the dict is None outside a container.

    ``notes`` says what was seen but not trusted, so a surprising answer can be checked.
    """
    evidence: list[str] = []
    notes: list[str] = []
    runtimes: list[str] = []

    cgroups = cgroup_paths(root)
    cgroup_path = cgroups.get("") or cgroups.get("cpu") or cgroups.get("memory") or next(iter(cgroups.values()), None)
    for path in dict.fromkeys(cgroups.values()):
        for pattern, runtime in _CGROUP_RUNTIMES:
            if pattern.search(path):
                evidence.append(f"cgroup {path}")
                runtimes.append(runtime)
                break

    for entry in mounts:
        if entry.mount_point in _BIND_TARGETS and entry.root:
            for pattern, runtime in _BIND_RUNTIMES:
                if pattern.search(entry.root):
                    evidence.append(f"{entry.mount_point} bind-mounted from {entry.root}")
                    runtimes.append(runtime)
                    break

    if _files.exists(root, "/run/.containerenv"):
        evidence.append("/run/.containerenv")
        # Podman writes engine="podman-4.9.3"; buildah/toolbox write their own names.
        match = re.search(r'engine="([a-z-]+?)-[0-9]', _files.read_text(root, "/run/.containerenv") or "")
        runtimes.append(match.group(1) if match else "podman")

    announced = _environ_container(root)
    if announced:
        evidence.append(f"container={announced}")
        runtimes.append({"oci": "unknown", "lxc-libvirt": "lxc"}.get(announced, announced))

    root_mount = _files.mount_for("/", mounts)
    root_is_layer = root_mount is not None and root_mount.fstype in _CONTAINER_ROOT_FS
    if _files.exists(root, "/.dockerenv"):
        if root_is_layer or evidence:
            evidence.append("/.dockerenv")
            runtimes.append("docker")
        else:
            where = f"{root_mount.fstype} on {root_mount.source}" if root_mount else "not a container layer"
            notes.append(f"/.dockerenv ignored: / is {where} "
                         "(probably left over from the image this system was built from)")
    if root_is_layer and evidence and root_mount is not None:
        evidence.append(f"/ is {root_mount.fstype}")

    if not runtimes:
        return None, notes
    # The first, most specific signal names the runtime (a cgroup "kubepods" beats the
    # docker-style bind mounts that containerd also makes).
    return {"runtime": runtimes[0], "cgroup_path": cgroup_path, "evidence": evidence}, notes


def _cgroup_dirs(root: str, mounts: list[_files.MountEntry], controller: str | None) -> list[str]:
    """Directories whose limit files apply to us, innermost first.

    A limit set on any ancestor cgroup applies too, so the effective limit is the
    smallest along the path. Inside a container the cgroup mount's root already is the
    container's cgroup, so the mount point itself is always a candidate.
    """
    paths = cgroup_paths(root)
    if controller is None:
        points = [m.mount_point for m in mounts if m.fstype == "cgroup2"] or ["/sys/fs/cgroup"]
        path = paths.get("", "/")
    else:
        points = [
            m.mount_point for m in mounts
            if m.fstype == "cgroup" and controller in m.options.split(",")
        ] or [f"/sys/fs/cgroup/{controller}"]
        path = paths.get(controller, "/")
    parts = [p for p in path.split("/") if p]
    if ".." in parts:
        # Our cgroup lies outside this cgroup namespace's root: not reachable by path.
        parts = []
    dirs: list[str] = []
    for point in points:
        for depth in range(len(parts), -1, -1):
            dirs.append("/".join([point.rstrip("/")] + parts[:depth]) or "/")
    return list(dict.fromkeys(dirs))


def _smallest(values: list[float]) -> float | None:
    return min(values) if values else None


def cpu_quota(root: str, mounts: list[_files.MountEntry]) -> float | None:
    """The CFS CPU limit in CPUs (0.5 = half a CPU), or None when unlimited or unknown."""
    quotas: list[float] = []
    for directory in _cgroup_dirs(root, mounts, None):
        line = _files.read_line(root, f"{directory}/cpu.max")
        fields = line.split() if line else []
        # cgroup v2: "max 100000" (no limit) or "50000 100000" (quota period, in µs).
        if len(fields) >= 1 and fields[0] != "max":
            period = fields[1] if len(fields) > 1 else "100000"
            quota = _ratio(fields[0], period)
            if quota is not None:
                quotas.append(quota)
    for directory in _cgroup_dirs(root, mounts, "cpu"):
        # cgroup v1: cpu.cfs_quota_us is -1 when there is no limit.
        quota_us = _files.read_int(root, f"{directory}/cpu.cfs_quota_us")
        period_us = _files.read_int(root, f"{directory}/cpu.cfs_period_us")
        if quota_us is not None and quota_us > 0 and period_us:
            quota = _ratio(str(quota_us), str(period_us))
            if quota is not None:
                quotas.append(quota)
    smallest = _smallest(quotas)
    # Rounded because it is a match key: the same limit must always hash the same.
    return None if smallest is None else round(smallest, 4)


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_value, period_value = int(quota), int(period)
    except ValueError:
        return None
    if quota_value <= 0 or period_value <= 0:
        return None
    return quota_value / period_value


def memory_limit_bytes(root: str, mounts: list[_files.MountEntry]) -> int | None:
    """The cgroup memory limit in bytes, or None when unlimited or unknown."""
    limits: list[float] = []
    for directory in _cgroup_dirs(root, mounts, None):
        value = _files.read_int(root, f"{directory}/memory.max")  # "max" reads as None
        if value is not None and 0 < value < _UNLIMITED_BYTES:
            limits.append(value)
    for directory in _cgroup_dirs(root, mounts, "memory"):
        value = _files.read_int(root, f"{directory}/memory.limit_in_bytes")
        if value is not None and 0 < value < _UNLIMITED_BYTES:
            limits.append(value)
    smallest = _smallest(limits)
    return None if smallest is None else int(smallest)

