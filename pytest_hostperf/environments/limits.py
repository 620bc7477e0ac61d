"""Resource limits for containers: parsed from options here, applied by the docker backend.

Stdlib only and light: the plugin imports the parsers at start-up. A test body is
untrusted code: without limits a fork loop or a multi-gigabyte write into a tmpfs
reaches the host. The defaults bound it while leaving a benchmark plenty:

* ``pids``: 512 processes and threads in the container;
* ``memory``: half of the engine's memory (a tmpfs counts against it too);
* ``tmpfs size``: a quarter of the engine's memory for the ``tmpfs`` mount, so a test
  that fills it gets ENOSPC instead of the OOM killer.

``0`` switches a limit off.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Final, Optional

DEFAULT_PIDS: Final = 512
DEFAULT_MEMORY: Final = "50%"
DEFAULT_TMPFS_SIZE: Final = "25%"
_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*")
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_pids(text: str) -> int:
    """``--hostperf-docker-pids``: a process count; 0 for no limit."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of processes like 512 (0 for no limit), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the process limit cannot be negative (got {value}); use 0 for no limit")
    if 0 < value < 16:
        raise argparse.ArgumentTypeError(f"{value} processes cannot even start pytest; use at least 16 (0: no limit)")
    return value


def parse_amount(text: str) -> str:
    """``--hostperf-docker-memory`` / ``-tmpfs-size``: ``2g``, ``512m``, ``50%`` of the engine's memory, or 0."""
    Amount.parse(text)  # validate now: a bad value is a usage error before anything starts
    return text.strip()


@dataclasses.dataclass(frozen=True)
class Amount:
    """A size in bytes or a fraction of the engine's memory; both None means no limit."""

    size: Optional[int] = None
    fraction: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> Amount:
        raw = text.strip()
        if raw in ("0", "none", "off"):
            return cls()
        if raw.endswith("%"):
            try:
                percent = float(raw[:-1])
            except ValueError:
                percent = -1.0
            if not 0 < percent <= 100:
                raise argparse.ArgumentTypeError(f"expected a percentage between 0 and 100 like 50%, got {text!r}")
            return cls(fraction=percent / 100)
        match = _SIZE.fullmatch(raw)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"expected a size like 2g, 512m or 50% (of the engine's memory), or 0 for no limit; got {text!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
        if size < 16 << 20:
            raise argparse.ArgumentTypeError(f"{text!r} is less than 16 MiB: too small to run a test in")
        return cls(size=size)

    def bytes_of(self, total: int | None) -> int | None:
        """The limit in bytes, given the engine's memory; None for no limit."""
        if self.size is not None:
            return self.size
        if self.fraction is not None and total:
            return int(total * self.fraction)
        return None


@dataclasses.dataclass(frozen=True)
class ContainerLimits:
    """What a container may use; built from the settings (None: the default)."""

    pids: int | None = DEFAULT_PIDS
    memory_bytes: int | None = None
    tmpfs_bytes: int | None = None

    @classmethod
    def resolve(cls, pids: int | None, memory: str | None, tmpfs_size: str | None,
                engine_memory: int | None) -> ContainerLimits:
        """Settings + the engine's memory (``docker info`` MemTotal) -> byte values."""
        return cls(
            pids=DEFAULT_PIDS if pids is None else (pids or None),
            memory_bytes=Amount.parse(memory or DEFAULT_MEMORY).bytes_of(engine_memory),
            tmpfs_bytes=Amount.parse(tmpfs_size or DEFAULT_TMPFS_SIZE).bytes_of(engine_memory),
        )
