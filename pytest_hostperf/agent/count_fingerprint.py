"""What decides an instruction count: the software, not the machine's speed.

Two counts of the same code compare when the same instructions run: same architecture
and simulated ISA level (glibc and extensions pick code paths by CPU features), same
interpreter build (executable and libpython bytes), same libc and libm, same installed
packages, same valgrind and the same way of running (allocator, hash seed), in the same
kind of environment. The CPU model, its speed and the kernel do not enter: a baseline
counted on one machine gates on another with the same software.

Stdlib only: runs inside every environment, in the counting agent.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Final, Iterable

from pytest_hostperf.agent.client_requests import MachineCode, isa_level
from pytest_hostperf.agent.instructions import METHOD

FINGERPRINT_SCHEMA: Final = 1
#: Keys that must be equal for two counts to be compared (``packages`` as its digest).
MATCH_KEYS: Final = ("machine", "isa_level", "python", "interpreter", "libc", "libraries", "packages_digest",
                     "valgrind", "allocator", "hash_seed", "env_kind", "method")
#: Shared objects of the running process whose bytes decide the instructions executed.
_LIBRARY_PREFIXES: Final = ("libpython", "libc.so", "libc-", "libm.so", "libm-")


def _sha256_file(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()[:16]


def loaded_libraries(maps_text: str) -> list[str]:
    """Paths of the interpreter's own shared objects in a ``/proc/PID/maps`` text, sorted."""
    found = set()
    for line in maps_text.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = fields[5].strip()
            if os.path.basename(path).startswith(_LIBRARY_PREFIXES):
                found.add(path)
    return sorted(found)


def _libraries() -> dict[str, str | None]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = loaded_libraries(maps.read())
    except OSError:
        return {}
    return {os.path.basename(path): _sha256_file(path) for path in paths}


def package_list(distributions: Iterable[Any] | None = None) -> list[str]:
    """``name==version`` of every installed distribution this interpreter sees, sorted."""
    seen = set()
    for dist in importlib.metadata.distributions() if distributions is None else distributions:
        name = (dist.metadata["Name"] or "").strip()
        if name:
            seen.add(f"{name.lower().replace('_', '-')}=={dist.version}")
    return sorted(seen)


def _valgrind_version() -> str | None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    try:
        out = subprocess.run([valgrind, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _env_kind() -> str | None:
    try:
        from pytest_hostperf.fingerprint import collect_inside
    except ImportError:  # pragma: no cover - shipped together with the agent
        return None
    try:
        return collect_inside({}).get("env_kind")
    except Exception:  # noqa: BLE001 - an unreadable /proc must not stop counting
        return None


def software_fingerprint(code: MachineCode | None) -> dict[str, Any]:
    """The facts of :data:`MATCH_KEYS` (and the package list) for this process."""
    packages = package_list()
    fingerprint = {
        "schema": FINGERPRINT_SCHEMA,
        "machine": platform.machine(),
        "isa_level": isa_level(code) if code is not None else None,
        "python": sys.version,
        "interpreter": _sha256_file(os.path.realpath(sys.executable)),
        "libc": " ".join(platform.libc_ver()).strip() or None,
        "libraries": _libraries(),
        "packages": packages,
        "packages_digest": hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16],
        "valgrind": _valgrind_version(),
        "allocator": os.environ.get("PYTHONMALLOC") or "pymalloc",
        "hash_seed": os.environ.get("PYTHONHASHSEED"),
        "env_kind": _env_kind(),
        "method": METHOD,
    }
    fingerprint["id"] = fingerprint_id(fingerprint)
    return fingerprint


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short digest of the :data:`MATCH_KEYS` of ``fingerprint``: equal ids, comparable counts."""
    view = {key: fingerprint.get(key) for key in MATCH_KEYS}
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]
