"""Kill the agent processes of one environment: ``python -m pytest_hostperf.agent.kill TOKEN [WORKDIR]``.

Runs where the agent runs (a container, an ssh target), with the agent's interpreter,
when the agent does not leave on stdin EOF. An agent is found by its token in the
:data:`~pytest_hostperf.agent.protocol.TOKEN_VAR` variable of its environment (Linux
``/proc``), so nothing else is ever hit: not a process that merely has the token in its
arguments, and not this killer. Without ``/proc`` (a macOS target) it falls back to
agents whose command line names ``WORKDIR``. Host pids mean nothing here, and a minbase
image has no pkill: hence a module of our own. Stdlib only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pytest_hostperf.agent.protocol import TOKEN_VAR


def processes_with_token(token: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids whose environment holds ``TOKEN_VAR=token`` exactly (ours excluded)."""
    wanted = f"{TOKEN_VAR}={token}".encode()
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def agents_naming(workdir: str) -> list[int]:
    """Agent processes whose command line names ``workdir`` (``ps``, for systems without /proc)."""
    out = subprocess.run(["ps", "-axo", "pid=,command="], stdout=subprocess.PIPE,
                         text=True, check=False).stdout
    mine = {os.getpid(), os.getppid()}
    found = []
    for line in out.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit() and int(pid) not in mine and workdir in command and "pytest_hostperf.agent" in command:
            found.append(int(pid))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0]:
        sys.stderr.write("usage: python -m pytest_hostperf.agent.kill TOKEN [WORKDIR]\n")
        return 2
    token, workdir = args[0], (args[1] if len(args) > 1 else "")
    if Path("/proc/self").is_dir():
        victims = processes_with_token(token)
    else:
        victims = agents_naming(workdir) if workdir else []
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
