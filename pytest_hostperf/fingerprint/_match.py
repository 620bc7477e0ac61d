"""Which facts must be equal before two results may be compared, and a short id for them.

Like pyperf's list of metadata that must match, but chosen for what changes timings of
the *same* code: a key belongs here when a change in it alone moves results by more
than the tolerance people gate on (a few percent). Facts that drift without changing
speed much (kernel patch level, hostname, memory size) stay in the fingerprint as
context, shown when a baseline is missing, but do not split baselines: splitting on
them would leave every run without a baseline after a routine upgrade.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final, Mapping

MATCH_KEYS: Final[tuple[str, ...]] = (
    # Instruction set: results on x86_64 and aarch64 measure different machine code.
    "machine",
    # Linux vs macOS vs Windows host: different syscalls, allocators, filesystems.
    "os",
    # The CPU is the first-order factor; CI runners land on different CPU generations
    # from run to run, and comparing across them is the classic false regression.
    "cpu_model",
    # Usable CPUs (affinity/cpuset): changes anything parallel and the noise from
    # co-scheduled work; a resized VM or a --cpuset-cpus change is a new environment.
    "cpu_count",
    # A CFS quota throttles in 100 ms periods: 0.5 CPU can double wall time.
    "cpu_quota",
    # native / container / vm / container-in-vm / wsl: the layer being measured.
    "env_kind",
    # docker vs podman vs kubernetes: different default seccomp, cgroup and storage.
    "container.runtime",
    # KVM vs QEMU TCG is ~10x for CPU work; Hyper-V, VMware, Apple VZ differ in I/O.
    "hypervisor.vendor",
    # CPython vs PyPy: different worlds.
    "python_implementation",
    # 3.11 vs 3.12 moves timings by 10-25%; patch releases rarely do, so the full
    # python_version is context.
    "python_minor",
)
"""Dotted paths into a fingerprint that must be equal for two results to be compared."""

MOUNT_KEY: Final = "mount.fstype"
"""The view key for the filesystem under test (see :func:`match_view`'s ``mount``)."""


def _lookup(fingerprint: Mapping[str, Any], dotted: str) -> Any:
    value: Any = fingerprint
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _plain(value: Any) -> Any:
    # Only JSON scalars go into a view, so the id is the same after a JSON round trip.
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, into)
    else:
        into[prefix] = _plain(value)


def match_view(
    fingerprint: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    mount: str | None = None,
) -> dict[str, Any]:
    """The flat ``{dotted_key: value}`` of :data:`MATCH_KEYS` (missing ones are None).

    ``extra`` carries facts only the outside knows (Docker engine kind, storage driver,
    QEMU accelerator); nested mappings in it are flattened to dotted keys. ``mount``
    names an entry of ``fingerprint["mounts"]`` whose filesystem type joins the view as
    ``mount.fstype``, because the same mount name can sit on very different storage
    (a Docker Desktop update switching gRPC FUSE to VirtioFS is a new environment).
    """
    view = {key: _plain(_lookup(fingerprint, key)) for key in MATCH_KEYS}
    if mount is not None:
        view[MOUNT_KEY] = _plain(_lookup(fingerprint, f"mounts.{mount}.fstype"))
    if extra:
        _flatten("", extra, view)
    return view


def _as_view(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # A view is flat; a full fingerprint has nested sections ("hypervisor", "mounts").
    # Accepting both keeps a caller that passes the fingerprint from hashing its hostname.
    if any(isinstance(item, Mapping) for item in value.values()):
        return match_view(value)
    return value


def fingerprint_id(view: Mapping[str, Any]) -> str:
    """12 hex characters of SHA-256 over the canonical JSON of a match view.

    Canonical: sorted keys, no whitespace, ASCII only, so the id is stable across
    Python versions, platforms and JSON round trips. A full fingerprint is reduced to
    its match view first.
    """
    canonical = json.dumps(dict(_as_view(view)), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:12]


def mismatches(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value_in_a, value_in_b)`` for each match key that differs, in key order.

    Takes match views (or full fingerprints, reduced to their views); a key present in
    only one of them counts as None in the other.
    """
    view_a, view_b = _as_view(a), _as_view(b)
    ordered = list(MATCH_KEYS) + ([MOUNT_KEY] if MOUNT_KEY in view_a or MOUNT_KEY in view_b else [])
    others = sorted((set(view_a) | set(view_b)) - set(ordered))
    return [
        (key, view_a.get(key), view_b.get(key))
        for key in ordered + others
        if view_a.get(key) != view_b.get(key)
    ]
