"""What an environment really is: the facts that decide whether two timings compare.

:func:`collect_inside` runs inside every environment (natively too) and is imported by
the agent, so this package is stdlib only (psutil is used on the controller when it is
there). Everything it reads from /proc, /sys and / goes through one ``root`` argument so
tests can describe any environment as a fake tree. Collectors skip what is missing;
nothing here raises on a missing or odd file.

:data:`MATCH_KEYS`, :func:`match_view` and :func:`fingerprint_id` decide which
baselines a result may be compared with; :func:`classify_engine` names the Docker
engine from the controller side.
"""

from __future__ import annotations

import glob
import platform
import re
import socket
from typing import Any, Final, Mapping

from pytest_hostperf.fingerprint import _container, _cpu, _files, _hypervisor
from pytest_hostperf.fingerprint._cpu import cpuid_hypervisor_signature
from pytest_hostperf.fingerprint._engine import classify_engine
from pytest_hostperf.fingerprint._hypervisor import vendor_from_signature
from pytest_hostperf.fingerprint._match import MATCH_KEYS, fingerprint_id, match_view, mismatches
from pytest_hostperf.fingerprint._mounts import classify_filesystem, collect_mounts, mount_signature

__all__ = [
    "FINGERPRINT_SCHEMA",
    "MATCH_KEYS",
    "classify_engine",
    "classify_filesystem",
    "collect_host",
    "collect_inside",
    "cpuid_hypervisor_signature",
    "fingerprint_id",
    "match_view",
    "mismatches",
    "mount_signature",
    "summary",
    "vendor_from_signature",
]

FINGERPRINT_SCHEMA: Final = 1
"""Version of the dict :func:`collect_inside` returns (its ``schema`` key)."""


def _system_fact(root: str, path: str, live_fallback: Any) -> str | None:
    # The tree's own answer first; the running kernel's only when the tree is the system.
    value = _files.read_line(root, path)
    if value is None and _files.is_live(root):
        try:
            value = live_fallback() or None
        except OSError:
            value = None
    return value


def _libc(root: str) -> str | None:
    # The C library the interpreter was linked against: glibc vs musl changes malloc
    # and therefore Python timings noticeably.
    try:
        name, version = platform.libc_ver()
    except (OSError, ValueError):
        name, version = "", ""
    if name:
        return f"{name} {version}".strip()
    if glob.glob(_files.host_path(root, "/lib/ld-musl-*.so.1")):
        return "musl"
    return None


def _hostname(root: str) -> str | None:
    name = _system_fact(root, "/proc/sys/kernel/hostname", socket.gethostname)
    # "(none)" is the kernel's placeholder in a VM whose init never set a name.
    return None if name == "(none)" else name


def _is_wsl(root: str, kernel: str | None) -> bool:
    return "microsoft" in (kernel or "").lower() or _files.exists(root, "/proc/sys/fs/binfmt_misc/WSLInterop")


def _env_kind(container: Mapping[str, Any] | None, in_vm: bool, wsl: bool) -> str:
    if container is not None:
        # WSL2 is a VM too: Docker Desktop's WSL2 backend runs containers inside it.
        return "container-in-vm" if in_vm or wsl else "container"
    if wsl:
        return "wsl"
    return "vm" if in_vm else "native"


def collect_inside(mount_paths: Mapping[str, str] | None = None, root: str = "/") -> dict[str, Any]:
    """The fingerprint of the environment this code runs in, as a JSON-able dict.

    ``mount_paths`` maps mount names ("bind", "volume", ...) to directories whose
    filesystem should be identified; ``root`` is where /proc, /sys and / are read from
    (a fake tree in tests). Keys: ``schema``, ``cpu_model``, ``cpu_count`` (usable, from
    the affinity mask), ``cpu_count_logical``, ``memory_total_bytes``, ``os``,
    ``kernel``, ``machine``, ``libc``, ``python_implementation``, ``python_version``,
    ``python_minor``, ``python_compiler``, ``hostname``, ``env_kind``, ``container``,
    ``cpu_quota``, ``memory_limit_bytes``, ``hypervisor``, ``mounts``, ``notes``.
    """
    records = _cpu.cpuinfo_records(root)
    flags = _cpu.cpu_flags(records)
    logical = _cpu.cpu_count_logical(records, root)
    kernel = _system_fact(root, "/proc/sys/kernel/osrelease", platform.release)
    table = _files.mount_table(root)
    container, notes = _container.detect_container(root, table)
    hypervisor = _hypervisor.collect_hypervisor(root, flags, kernel)
    wsl = _is_wsl(root, kernel)
    if "hypervisor" in flags and hypervisor["signature"] is None and _files.is_live(root):
        notes.append("CPUID hypervisor signature unreadable here; hypervisor vendor inferred from /sys")
    version = platform.python_version_tuple()
    return {
        "schema": FINGERPRINT_SCHEMA,
        "cpu_model": _cpu.cpu_model(records, root),
        "cpu_count": _cpu.cpu_count_usable(root, logical),
        "cpu_count_logical": logical,
        "memory_total_bytes": _cpu.memory_total_bytes(root),
        "os": _system_fact(root, "/proc/sys/kernel/ostype", platform.system),
        "kernel": kernel,
        # The interpreter's architecture is a fact of this process whatever the tree says.
        "machine": _files.read_line(root, "/proc/sys/kernel/arch") or platform.machine() or None,
        "libc": _libc(root),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "python_minor": f"{version[0]}.{version[1]}",
        "python_compiler": platform.python_compiler() or None,
        "hostname": _hostname(root),
        "env_kind": _env_kind(container, hypervisor["present"], wsl),
        "container": container,
        "cpu_quota": _container.cpu_quota(root, table),
        "memory_limit_bytes": _container.memory_limit_bytes(root, table),
        "hypervisor": hypervisor,
        "mounts": collect_mounts(mount_paths, root),
        "notes": notes,
    }


def _cpu_freq_max_mhz() -> float | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            freq = psutil.cpu_freq()
        except Exception:  # noqa: BLE001 - psutil raises NotImplementedError/OSError on some platforms
            freq = None
        if freq is not None and freq.max:
            return float(freq.max)
    khz = _files.read_int("/", "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return khz / 1000 if khz else None


def _cpu_count_physical() -> int | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            count = psutil.cpu_count(logical=False)
        except Exception:  # noqa: BLE001 - see above
            count = None
        if count:
            return int(count)
    cores = {(r.get("physical id"), r.get("core id")) for r in _cpu.cpuinfo_records("/") if "core id" in r}
    return len(cores) or None


def collect_host(mount_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The controller's own fingerprint: :func:`collect_inside` plus host-only extras.

    Extras (context, never match keys): ``cpu_count_physical``, ``cpu_freq_max_mhz``
    and ``cpu_governor`` ("powersave" explains a slow host). Boot time is left out on
    purpose: it changes on every reboot and would make fingerprints differ for nothing.
    Docker and QEMU facts are added by their own modules.
    """
    facts = collect_inside(mount_paths, "/")
    facts["cpu_count_physical"] = _cpu_count_physical()
    facts["cpu_freq_max_mhz"] = _cpu_freq_max_mhz()
    facts["cpu_governor"] = _files.read_line("/", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return facts


def _kernel_short(kernel: Any) -> str:
    match = re.match(r"\d+\.\d+", kernel) if isinstance(kernel, str) else None
    return match.group(0) if match else (kernel or "")


def summary(fingerprint: Mapping[str, Any]) -> str:
    """One line a person reads, e.g. "vm (KVM) · AMD EPYC · 2 CPUs · Linux 6.1 · CPython 3.11.7"."""
    kind = str(fingerprint.get("env_kind") or "unknown")
    container = fingerprint.get("container")
    hypervisor = fingerprint.get("hypervisor")
    runtime = container.get("runtime") if isinstance(container, Mapping) else None
    vendor = hypervisor.get("vendor") if isinstance(hypervisor, Mapping) else None
    detail = " on ".join(str(part) for part in (runtime, vendor) if part)
    parts = [f"{kind} ({detail})" if detail else kind]
    if fingerprint.get("cpu_model"):
        parts.append(str(fingerprint["cpu_model"]))
    count = fingerprint.get("cpu_count")
    if count is not None:
        cpus = f"{count} CPU" + ("" if count == 1 else "s")
        quota = fingerprint.get("cpu_quota")
        parts.append(f"{cpus} (quota {quota:g})" if isinstance(quota, (int, float)) else cpus)
    system = " ".join(p for p in (str(fingerprint.get("os") or ""), _kernel_short(fingerprint.get("kernel"))) if p)
    if system:
        parts.append(system)
    python = " ".join(
        str(p) for p in (fingerprint.get("python_implementation"), fingerprint.get("python_version")) if p
    )
    if python:
        parts.append(python)
    return " · ".join(parts)
