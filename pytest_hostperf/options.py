"""Parsing of option and marker values. Pure: raises ``argparse.ArgumentTypeError``.

Kept free of pytest so the CLI and the plugin share one definition of every format.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from typing import Final, Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class EnvironmentKind:
    """A kind of environment a user can name in ``--hostperf-envs`` and what it offers.

    The built-in kinds are :data:`BUILTIN_KINDS`; a plugin adds its own through the
    ``pytest_hostperf_environment_kinds`` hook (and builds them through
    ``pytest_hostperf_make_environment``).
    """

    name: str                   # "docker", or a plugin's "podman-machine"
    mounts: tuple[str, ...]     # places hostperf_dir can live; the first is the default
    takes_target: bool = False  # named as KIND:TARGET (ssh:HOST)
    #: Mounts offered only when asked for by name (``--hostperf-mounts`` or the marker's
    #: ``mounts=``): they cost what the others do not (another guest kernel, a server).
    on_request: tuple[str, ...] = ()
    #: Runs in a VM: budgets may be keyed by accelerator (``qemu:tcg``).
    accelerated: bool = False

    def __post_init__(self) -> None:
        if not _KIND.match(self.name):
            raise ValueError(f"environment kind {self.name!r}: use lower-case letters, digits and '-' "
                             "(and one '@' for a layered kind such as docker@qemu)")
        if not self.mounts:
            raise ValueError(f"environment kind {self.name!r} must offer at least one mount")

    @property
    def all_mounts(self) -> tuple[str, ...]:
        """The default mounts, then those offered on request."""
        return self.mounts + tuple(m for m in self.on_request if m not in self.mounts)


_KIND = re.compile(r"^[a-z][a-z0-9-]*(@[a-z][a-z0-9-]*)?$")

#: The kinds this package builds itself (environments/registry.py).
BUILTIN_KINDS: Final = (
    EnvironmentKind("native", ("host",)),
    EnvironmentKind("docker", ("bind", "volume", "tmpfs", "layer")),
    # share: virtiofs (9p where the guest kernel has no virtiofs); share-9p and share-nfs
    # are the same host directory over 9p and NFSv4 (issue #14's share axis).
    EnvironmentKind("qemu", ("guest", "share", "tmpfs"), on_request=("share-9p", "share-nfs"), accelerated=True),
    # The Docker engine inside a QEMU VM, as Docker Desktop, colima, Lima and Podman
    # machine run it: bind mounts of host directories shared into the VM, a volume on the
    # VM's disk, the container's layer.
    EnvironmentKind("docker@qemu", ("bind-virtiofs", "bind-9p", "bind-nfs", "volume", "layer"), accelerated=True),
    EnvironmentKind("ssh", ("remote",), takes_target=True),
)
#: Kinds by name: what parsing accepts when no plugin adds any.
Kinds = Mapping[str, EnvironmentKind]
BUILTIN: Final[Kinds] = {kind.name: kind for kind in BUILTIN_KINDS}

#: Backends a user can name; ``ssh:HOST`` carries its target.
ENV_KINDS: Final = tuple(BUILTIN)

#: Budgets for ratio to native when none is configured. A container shares the host
#: kernel, so CPU work should cost ~1.0x and file sharing on Linux ~1.3x; a VM with
#: hardware acceleration costs some percent on CPU work and more on I/O; a software
#: emulated (TCG) VM runs Python ~10-15x slower on our machines, so its honest budget is
#: an order of magnitude looser. Keys: "<env>", "<env>-<mount>", "qemu:<accelerator>".
DEFAULT_MAX_OVERHEAD: Final[Mapping[str, float]] = {
    "docker": 1.5,
    "qemu:kvm": 2.0,
    "qemu:hvf": 2.0,
    "qemu:tcg": 40.0,
    "docker@qemu:kvm": 2.0,
    "docker@qemu:hvf": 2.0,
    "docker@qemu:tcg": 40.0,
}

#: Mounts each environment kind offers for ``hostperf_dir``; the first is the default.
#: Declared here (not asked of a running backend) so collection needs no engine.
MOUNTS: Final[Mapping[str, tuple[str, ...]]] = {kind.name: kind.all_mounts for kind in BUILTIN_KINDS}
ACCELERATORS: Final = ("kvm", "hvf", "tcg")

#: A target host: a name from the ssh config, user@host, host:port. Never starting with
#: '-': ssh would read "-Jx" or "-Fevil" as an option of its own.
_HOST = re.compile(r"^[A-Za-z0-9_.@][A-Za-z0-9_.@:-]*$")


def kinds_by_name(kinds: Iterable[EnvironmentKind]) -> dict[str, EnvironmentKind]:
    """Kinds keyed by name; two plugins claiming one name is an error naming it."""
    by_name: dict[str, EnvironmentKind] = {}
    for kind in kinds:
        if kind.name in by_name and by_name[kind.name] != kind:
            raise ValueError(f"environment kind {kind.name!r} is declared twice, differently")
        by_name[kind.name] = kind
    return by_name


def _kind_list(kinds: Kinds) -> str:
    names = [f"{k.name}:{'HOST' if k.name == 'ssh' else 'TARGET'}" if k.takes_target else k.name
             for k in kinds.values()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def parse_envs(text: str, kinds: Kinds = BUILTIN) -> tuple[str, ...]:
    """``native,docker,qemu,ssh:HOST`` -> tuple of environment names, order kept."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        kind_name, _, target = name.partition(":")
        kind = kinds.get(kind_name)
        if kind is None:
            raise argparse.ArgumentTypeError(
                f"unknown environment {name!r}; expected a comma-separated list of "
                f"{_kind_list(kinds)} (for example: --hostperf-envs=native,docker)")
        if kind.takes_target and not (target and _HOST.match(target)):
            raise argparse.ArgumentTypeError(
                f"environment {name!r} needs a host: {kind.name}:HOST, where HOST is a name from your ssh config "
                f"(for example {kind.name}:lima-default); a host may not start with '-'")
        if not kind.takes_target and target:
            takers = [k.name for k in kinds.values() if k.takes_target]
            raise argparse.ArgumentTypeError(f"environment {name!r}: only {' and '.join(takers) or 'none'} "
                                             f"take a ':' target, {kind.name} does not")
        if name not in names:
            names.append(name)
    if not names:
        raise argparse.ArgumentTypeError("no environment given; for example --hostperf-envs=native,docker")
    return tuple(names)


def parse_fraction(text: str | float, what: str = "tolerance") -> float:
    """``5%``, ``0.05`` or ``5 %`` -> 0.05; must lie in [0, 10)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip()
        try:
            value = float(raw[:-1].strip()) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} {text!r} is not a number; write a percentage like 5% or a fraction like 0.05") from None
    if not (isinstance(value, float) and 0 <= value < 10):
        raise argparse.ArgumentTypeError(f"{what} {text!r} is out of range; expected something like 5% (0.05)")
    return value


def parse_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha {text!r} is not a number; for example --hostperf-alpha=0.01") from None
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"alpha {text!r} must be between 0 and 0.5 (for example 0.01)")
    return value


def parse_positive_int(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {value}")
    return value


def _positive(text: str, what: str, not_a_number: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} {not_a_number}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{what} must be positive and finite, got {text!r}")
    return value


#: What ``--hostperf-measure`` can list: wall time (always), instruction counts (callgrind).
MEASURES: Final = ("time", "instructions")


def parse_measure(text: str) -> tuple[str, ...]:
    """``time,instructions`` -> ("time", "instructions"); time is always measured."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    unknown = [name for name in names if name not in MEASURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"measure {text!r}: expected a comma-separated list of {' and '.join(MEASURES)} "
            "(for example --hostperf-measure=time,instructions)")
    if "time" not in names:
        raise argparse.ArgumentTypeError(
            f"measure {text!r}: time is always measured (the gate and the ratios to native need it); "
            "write --hostperf-measure=time,instructions")
    return tuple(name for name in MEASURES if name in names)


def parse_seconds(text: str, what: str = "timeout") -> float:
    """``300`` or ``300s`` -> 300.0 seconds."""
    return _positive(text.rstrip("s"), what, "is not a number of seconds (for example 300)")


def parse_cpus(text: str) -> float:
    """``0.5`` -> 0.5 CPUs, as ``docker run --cpus``."""
    return _positive(text, "CPU limit", "is not a number; for example 0.5 or 2")


def parse_budgets(text: str | Mapping[str, object], kinds: Kinds = BUILTIN) -> dict[str, float]:
    """``docker=1.10,docker-bind=1.5,qemu:tcg=20`` (or a mapping) -> {key: ratio}."""
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, "")
        for part in (p.strip() for p in str(text).replace("\n", ",").split(",")) if part
    )
    budgets: dict[str, float] = {}
    for key, raw in items:
        key = str(key).strip()
        if not _budget_key_ok(key, kinds):
            raise argparse.ArgumentTypeError(
                f"overhead budget {key!r}: unknown environment, mount or accelerator; keys look like "
                "docker, docker-bind, qemu-share, qemu:tcg, docker@qemu-volume "
                "(for example docker=1.10,docker-bind=1.5)")
        try:
            value = float(str(raw).rstrip("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"overhead budget {key}={raw!r} is not a ratio; write it like {key}=1.25 (1.25x native)") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"overhead budget {key}={raw} must be a finite ratio like 1.25")
        if value < 1:
            raise argparse.ArgumentTypeError(f"overhead budget {key}={raw} is below 1.0x native; ratios start at 1")
        budgets[key] = value
    return budgets


def _budget_key_ok(key: str, kinds: Kinds = BUILTIN) -> bool:
    """``docker``, ``docker-bind``, ``qemu:tcg``, ``ssh:HOST``, ``ssh:HOST-remote``."""
    kind_name, sep, rest = key.partition(":")
    if sep:
        kind = kinds.get(kind_name)
        if kind is not None and kind.takes_target:
            host = rest[: -len("-remote")] if rest.endswith("-remote") else rest
            return bool(host and _HOST.match(host))
        return kind is not None and kind.accelerated and rest in ACCELERATORS
    for kind in kinds.values():
        if key == kind.name or (key.startswith(kind.name + "-") and key[len(kind.name) + 1:] in kind.all_mounts):
            return True
    return False


def parse_mounts(text: str, kinds: Kinds = BUILTIN) -> tuple[str, ...]:
    """``share,share-9p,bind-nfs`` -> mount names any declared kind offers, order kept."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    known = {mount: kind.name for kind in kinds.values() for mount in kind.all_mounts}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        listing = ", ".join(f"{m} ({k})" for m, k in sorted(known.items()))
        raise argparse.ArgumentTypeError(
            f"unknown mount(s) {', '.join(unknown)}; known: {listing}" if unknown else
            "no mount given; for example --hostperf-mounts=host,share,share-9p,share-nfs")
    return names
