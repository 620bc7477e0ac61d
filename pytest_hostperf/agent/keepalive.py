"""The first process of a hostperf container: ``python -m pytest_hostperf.agent.keepalive DIR...``.

Runs under docker-init (which reaps) as root with every capability dropped, which
still lets it create the layer directory and open the root-owned mount points up to the
agent's uid (mode 1777). Then it prints :data:`READY_MARK` (the docker backend waits
for it before it starts the agent) and only waits: the container lives as long as the
session, and each agent is one ``docker exec`` into it. Stdlib only.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Final, Sequence

READY_MARK: Final = "hostperf-keepalive-ready"


def prepare(directories: Sequence[str]) -> None:
    """Create each directory and make it writable (and sticky) for every uid."""
    for path in directories:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o1777)


def main(argv: Sequence[str] | None = None) -> int:
    prepare(list(sys.argv[1:] if argv is None else argv))
    print(READY_MARK, flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
