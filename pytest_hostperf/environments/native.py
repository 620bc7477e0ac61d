"""The ``native`` environment: the agent as a subprocess on the host.

Measured through the same agent as every other environment, so "native" pays the same
protocol costs and the ratios to it compare like with like.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf.environments.base import AgentLaunch, Environment, Mount, Transport
from pytest_hostperf.environments.pipe import PipeTransport, spawn_piped


class NativeEnvironment(Environment):
    name = "native"

    def __init__(self, work_dir: Path, python: str | None = None) -> None:
        self.work_dir = work_dir
        self.python = python or sys.executable
        self._transport: PipeTransport | None = None
        self._log: Any = None

    def check(self) -> None:
        return None  # the host always works

    def mounts(self) -> Sequence[Mount]:
        return (Mount("host", str(self.work_dir / "native-host"), "a directory on the host's own disk"),)

    def start_agent(self, launch: AgentLaunch) -> Transport:
        for mount in self.mounts():
            Path(mount.path).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(launch.environ())
        existing = os.environ.get("PYTHONPATH")
        if existing:
            env["PYTHONPATH"] = launch.environ()["PYTHONPATH"] + os.pathsep + existing
        argv = launch.argv()
        argv[0] = self.python
        self._log = open(self.work_dir / "native-agent.log", "w", encoding="utf-8")  # noqa: SIM115
        self._transport = PipeTransport(spawn_piped(argv, env, cwd=launch.project_dir), self._log)
        return self._transport

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def describe(self) -> Mapping[str, Any]:
        return {"python": self.python}
