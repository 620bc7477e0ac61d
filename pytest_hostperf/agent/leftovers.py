"""List the session directories on an ssh target: ``python -m pytest_hostperf.agent.leftovers ROOT``.

Prints one marked JSON line per directory under ROOT that holds an ``owner.json``
(``{"dir": NAME, "owner": {...}}``); the controller decides which belong to sessions
that are gone (their owner is a process on the controller's machine, which only the
controller can check) and removes those. Stdlib only; reads nothing but the records.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Final, Sequence

MARK: Final = "@@hostperf-leftover@@ "
_MAX_RECORD: Final = 64 * 1024


def records(root: str) -> list[dict[str, object]]:
    """The owner record of every session directory under ``root``."""
    found: list[dict[str, object]] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        path = os.path.join(root, name, "owner.json")
        try:
            with open(path, "rb") as handle:
                owner = json.loads(handle.read(_MAX_RECORD))
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict):
            found.append({"dir": name, "owner": owner})
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m pytest_hostperf.agent.leftovers ROOT\n")
        return 2
    for record in records(args[0]):
        sys.stdout.write(MARK + json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
