"""CPU and memory facts, and the CPUID hypervisor signature read with ctypes."""

from __future__ import annotations

import os
import platform
import re
import struct
import subprocess
import sys
from typing import Final

from pytest_hostperf.fingerprint import _files

# CPUID leaf where hypervisors publish a 12-byte vendor signature (Intel SDM, "CPUID
# leaves reserved for hypervisor use"); valid only when the CPUID hypervisor bit is set.
HYPERVISOR_LEAF: Final = 0x40000000

# x86-64 System V: void cpuid(uint32_t leaf /* edi */, uint32_t out[4] /* rsi */).
_CPUID_CODE: Final = bytes([
    0x53,              # push rbx           rbx is callee-saved and cpuid clobbers it
    0x89, 0xF8,        # mov  eax, edi      leaf
    0x31, 0xC9,        # xor  ecx, ecx      sub-leaf 0
    0x0F, 0xA2,        # cpuid
    0x89, 0x06,        # mov  [rsi], eax
    0x89, 0x5E, 0x04,  # mov  [rsi+4], ebx
    0x89, 0x4E, 0x08,  # mov  [rsi+8], ecx
    0x89, 0x56, 0x0C,  # mov  [rsi+12], edx
    0x5B,              # pop  rbx
    0xC3,              # ret
])

_WHITESPACE: Final = re.compile(r"\s+")


def cpuinfo_records(root: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one ``{field: value}`` dict per blank-line separated block."""
    text = _files.read_text(root, "/proc/cpuinfo")
    records: list[dict[str, str]] = []
    if not text:
        return records
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        records.append(current)
    return records


def cpu_flags(records: list[dict[str, str]]) -> frozenset[str]:
    """The x86 feature flags of the first CPU (empty on other architectures)."""
    for record in records:
        flags = record.get("flags")
        if flags is not None:
            return frozenset(flags.split())
    return frozenset()


def cpu_model(records: list[dict[str, str]], root: str) -> str | None:
    """The CPU's marketing name, whitespace-normalised because it is a match key."""
    for key in ("model name", "cpu model", "cpu", "processor", "hardware"):
        for record in records:
            value = record.get(key, "")
            # "processor" is the CPU index on x86; only take it when it is a name (arm32).
            if value and not value.isdigit():
                return _WHITESPACE.sub(" ", value).strip()
    # arm64 cpuinfo has no name, only the implementer/part codes; they still identify it.
    for record in records:
        if "cpu implementer" in record and "cpu part" in record:
            return f"ARM implementer {record['cpu implementer']} part {record['cpu part']}"
    if _files.is_live(root):
        return _live_cpu_model()
    return None


def _live_cpu_model() -> str | None:
    # No /proc (macOS controller): ask the OS. The agent itself always runs on Linux.
    if sys.platform == "darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return _WHITESPACE.sub(" ", name).strip()
    name = platform.processor()
    return _WHITESPACE.sub(" ", name).strip() or None


def _sysctl(name: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def parse_cpu_list(text: str | None) -> set[int] | None:
    """A kernel CPU list ("0-3,8,10-11") as a set, or None when it does not parse."""
    if not text:
        return None
    cpus: set[int] = set()
    try:
        for part in text.strip().split(","):
            part = part.strip()
            if not part:
                continue
            first, sep, last = part.partition("-")
            cpus.update(range(int(first), int(last) + 1) if sep else (int(first),))
    except ValueError:
        return None
    return cpus or None


def cpu_count_logical(records: list[dict[str, str]], root: str) -> int | None:
    """CPUs the kernel has online, whatever this process may use."""
    online = parse_cpu_list(_files.read_line(root, "/sys/devices/system/cpu/online"))
    if online:
        return len(online)
    indices = [r for r in records if r.get("processor", "").isdigit()]
    if indices:
        return len(indices)
    if _files.is_live(root):
        return os.cpu_count()
    return None


def cpu_count_usable(root: str, logical: int | None) -> int | None:
    """CPUs this process may run on: its affinity mask (what ``taskset``/cpusets allow)."""
    if _files.is_live(root):
        getaffinity = getattr(os, "sched_getaffinity", None)
        if getaffinity is not None:
            try:
                return len(getaffinity(0))
            except OSError:
                pass
    # The same mask, from the file a fake tree can provide.
    status = _files.read_text(root, "/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            allowed = parse_cpu_list(line.partition(":")[2])
            if allowed:
                return len(allowed)
    return logical


def memory_total_bytes(root: str) -> int | None:
    """MemTotal from ``/proc/meminfo`` in bytes (what the kernel, or the VM, has)."""
    text = _files.read_text(root, "/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                return int(fields[1]) * (1024 if fields[-1].lower() == "kb" else 1)
            except (IndexError, ValueError):
                return None
    if _files.is_live(root):
        try:
            import psutil  # optional: only present on the controller side
        except ImportError:
            return None
        try:
            return int(psutil.virtual_memory().total)
        except Exception:  # noqa: BLE001 - psutil raises its own errors on exotic platforms
            return None
    return None


def _cpuid_possible() -> bool:
    # The machine code is x86-64 System V: wrong on any other ISA, on a 32-bit Python
    # running on a 64-bit kernel, and on Windows (different calling convention).
    return (
        sys.platform.startswith("linux")
        and platform.machine().lower() in ("x86_64", "amd64")
        and sys.maxsize > 2**32
    )


def cpuid(leaf: int) -> tuple[int, int, int, int] | None:
    """``(eax, ebx, ecx, edx)`` of CPUID ``leaf`` (sub-leaf 0), or None when it cannot run.

    The instruction is run from an anonymous executable page through ctypes: the
    signature cannot be read from any file, and a subprocess would cost more than the
    rest of the fingerprint. Systems that forbid writable+executable memory (SELinux
    ``execmem``, hardened kernels) make the mmap fail, which returns None.
    """
    if not _cpuid_possible():
        return None
    try:
        import ctypes
        import mmap

        page = mmap.mmap(
            -1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
        )
    except (ImportError, OSError, ValueError, AttributeError, TypeError):
        return None
    try:
        page.write(_CPUID_CODE)
        anchor = ctypes.c_char.from_buffer(page)
        try:
            function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_void_p)(ctypes.addressof(anchor))
            out = (ctypes.c_uint32 * 4)()
            function(leaf & 0xFFFFFFFF, ctypes.addressof(out))
            return (out[0], out[1], out[2], out[3])
        finally:
            # The ctypes view exports the mmap's buffer; it must go before close().
            del anchor
    except Exception:  # noqa: BLE001 - anything odd in ctypes means "unknown", never a failed run
        return None
    finally:
        try:
            page.close()
        except (BufferError, OSError):
            pass


def cpuid_hypervisor_signature() -> str | None:
    """The hypervisor's CPUID signature ("KVMKVMKVM", "TCGTCGTCGTCG", "Microsoft Hv"...).

    None when not on x86-64 Linux, when CPUID cannot be run, or when there is no
    hypervisor (the CPU's hypervisor bit, CPUID.1:ECX[31], is clear: leaf 0x40000000
    then returns unrelated data, so it is not read at all).
    """
    basic = cpuid(1)
    if basic is None or not basic[2] & (1 << 31):
        return None
    regs = cpuid(HYPERVISOR_LEAF)
    if regs is None:
        return None
    raw = struct.pack("<III", regs[1], regs[2], regs[3])
    text = raw.replace(b"\0", b"").decode("ascii", "replace").strip()
    # A signature is printable ASCII; anything else means we did not read one.
    if not text or not text.isprintable() or "\ufffd" in text:
        return None
    return text
