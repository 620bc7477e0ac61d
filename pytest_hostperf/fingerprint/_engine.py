"""Which container engine the controller talks to, from the Docker API's own answers.

"Docker" on a laptop is usually a Linux VM (Docker Desktop, OrbStack, colima...) whose
file sharing and CPU allotment dominate the results, so the product matters as much as
the engine version.
"""

from __future__ import annotations

from typing import Any, Mapping


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_podman(info: Mapping[str, Any], version: Mapping[str, Any]) -> bool:
    components = version.get("Components")
    for component in components if isinstance(components, list) else []:
        if "podman" in _text(_dict(component).get("Name")).lower():
            return True
    if "podman" in _text(_dict(version.get("Platform")).get("Name")).lower():
        return True
    # Podman's own (libpod) info: {"host": {...}, "store": {...}, "version": {...}}.
    return isinstance(info.get("host"), Mapping) and isinstance(info.get("version"), Mapping)


def _kind(info: Mapping[str, Any], version: Mapping[str, Any]) -> str:
    operating_system = _text(info.get("OperatingSystem"))
    name = _text(info.get("Name")).lower()
    kernel = _text(info.get("KernelVersion")).lower()
    platform = _text(_dict(version.get("Platform")).get("Name"))
    labels = info.get("Labels")
    labels_text = " ".join(label for label in labels if isinstance(label, str)) if isinstance(labels, list) else ""
    for product in ("Docker Desktop", "OrbStack", "Rancher Desktop"):
        if product in operating_system or product in platform:
            return product
    # Rancher Desktop on macOS is a Lima VM called "lima-rancher-desktop": test it first.
    if "rancher-desktop" in name:
        return "Rancher Desktop"
    if name.startswith("colima"):
        return "colima"
    if name.startswith("lima"):
        return "Lima"
    if name.startswith("orbstack") or "orbstack" in kernel:
        return "OrbStack"
    if name == "docker-desktop" or kernel.endswith("-linuxkit") or "com.docker.desktop" in labels_text:
        return "Docker Desktop"
    return "Docker Engine"


def classify_engine(info: Mapping[str, Any], version: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the engine behind a Docker API is, from ``client.info()`` / ``client.version()``.

    Pure: takes the dicts the Docker SDK returns and tolerates any key being missing.
    Returns ``{kind, rootless, version, storage_driver, kernel, operating_system,
    cgroup_version, cpus, memory_bytes, architecture, platform}``, where ``kind`` is one of
    "Docker Engine", "Docker Desktop", "OrbStack", "Rancher Desktop", "colima", "Lima",
    "Podman".
    """
    info = _dict(info)
    version = _dict(version)
    if _is_podman(info, version) and isinstance(info.get("host"), Mapping):
        return _classify_libpod(info)
    options = info.get("SecurityOptions")
    rootless = any("rootless" in opt for opt in options if isinstance(opt, str)) if isinstance(options, list) else False
    cgroup_version = info.get("CgroupVersion")
    return {
        "kind": "Podman" if _is_podman(info, version) else _kind(info, version),
        "rootless": rootless,
        "version": _text(info.get("ServerVersion")) or _text(version.get("Version")) or None,
        "storage_driver": _text(info.get("Driver")) or None,
        "kernel": _text(info.get("KernelVersion")) or _text(version.get("KernelVersion")) or None,
        "operating_system": _text(info.get("OperatingSystem")) or None,
        "cgroup_version": str(cgroup_version) if cgroup_version not in (None, "") else None,
        "cpus": _int(info.get("NCPU")),
        "memory_bytes": _int(info.get("MemTotal")),
        "architecture": _text(info.get("Architecture")) or _text(version.get("Arch")) or None,
        # "Docker Desktop 4.34.2 (167172)": the product version, which changes file sharing.
        "platform": _text(_dict(version.get("Platform")).get("Name")) or None,
    }


def _classify_libpod(info: Mapping[str, Any]) -> dict[str, Any]:
    # Podman's native info shape (``podman info --format json``).
    host = _dict(info.get("host"))
    store = _dict(info.get("store"))
    podman_version = _dict(info.get("version"))
    distribution = _dict(host.get("distribution"))
    cgroup_version = _text(host.get("cgroupVersion")).lstrip("v") or None
    os_name = " ".join(
        part for part in (_text(distribution.get("distribution")), _text(distribution.get("version"))) if part
    )
    return {
        "kind": "Podman",
        "rootless": bool(_dict(host.get("security")).get("rootless", False)),
        "version": _text(podman_version.get("Version")) or None,
        "storage_driver": _text(store.get("graphDriverName")) or None,
        "kernel": _text(host.get("kernel")) or None,
        "operating_system": os_name or None,
        "cgroup_version": cgroup_version,
        "cpus": _int(host.get("cpus")),
        "memory_bytes": _int(host.get("memTotal")),
        "architecture": _text(host.get("arch")) or None,
        "platform": _text(podman_version.get("OsArch")) or None,
    }
