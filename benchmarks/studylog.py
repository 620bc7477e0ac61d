"""The log lines every study appends to benchmarks/results/: a header with the command and
the load before, the summary, the load after."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def header(title: str, script: str) -> list[str]:
    """Printed now, and the first lines of the log entry."""
    lines = [f"# {title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# command: python3 benchmarks/{Path(script).name} {' '.join(sys.argv[1:])}",
             f"# load before: {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines), flush=True)
    return lines


def finish(lines: list[str], printed: int, log: Path) -> None:
    """Add the load after, print what was not printed yet, append the entry to ``log``."""
    lines.append(f"# load after: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines[printed:]))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write("\n".join(lines) + "\n\n")
