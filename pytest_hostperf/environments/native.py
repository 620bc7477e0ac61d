"""The ``native`` environment: the agent as a subprocess on the host.

Measured through the same agent as every other environment, so "native" pays the same
protocol costs and the ratios to it compare like with like.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_hostperf import counting
from pytest_hostperf.environments.base import AgentLaunch, Environment, EnvironmentFailure, Mount, Transport
from pytest_hostperf.environments.pipe import PipeTransport, spawn_piped
from pytest_hostperf.environments.process import no_aslr_prefix


class NativeEnvironment(Environment):
    name = "native"

    def __init__(self, work_dir: Path, python: str | None = None, keep_aslr: bool = False) -> None:
        self.work_dir = work_dir
        self.python = python or sys.executable
        #: Agents start without address-space randomisation where the host allows it
        #: (see :func:`no_aslr_prefix`), unless the user keeps it (--hostperf-keep-aslr).
        self._layout_prefix = () if keep_aslr else no_aslr_prefix()
        self._transport: PipeTransport | None = None
        self._log: Any = None
        self._counting: PipeTransport | None = None
        self._counting_log: Any = None
        self._dumps: counting.DumpDirectory | None = None

    def check(self) -> None:
        return None  # the host always works

    def mounts(self) -> Sequence[Mount]:
        return (Mount("host", str(self.work_dir / "native-host"), "a directory on the host's own disk"),)

    def start_agent(self, launch: AgentLaunch) -> Transport:
        for mount in self.mounts():
            Path(mount.path).mkdir(parents=True, exist_ok=True)
        argv = launch.argv()
        argv[0] = self.python
        self._log = open(self.work_dir / "native-agent.log", "w", encoding="utf-8")  # noqa: SIM115
        self._transport = PipeTransport(spawn_piped([*self._layout_prefix, *argv], self._environ(launch),
                                                    cwd=launch.project_dir), self._log)
        return self._transport

    def start_counting_agent(self, launch: AgentLaunch) -> Transport:
        """The agent under callgrind, its dumps in a slot directory whose path repeats."""
        if shutil.which("valgrind") is None:
            raise EnvironmentFailure(self.name, "valgrind is not installed on this host, so instructions cannot "
                                                "be counted", hint="apt-get install valgrind (scripts/setup.sh "
                                                                   "installs it), or drop instructions from "
                                                                   "--hostperf-measure")
        problem = counting.interpreter_problem(self.python)
        if problem:
            raise EnvironmentFailure(self.name, problem)
        self._close_counting()
        for mount in self.mounts():
            Path(mount.path).mkdir(parents=True, exist_ok=True)
        self._dumps = counting.DumpDirectory()
        dump_dir = self._dumps.__enter__()
        argv = launch.argv()
        argv[0] = self.python
        argv = counting.counting_argv(argv, dump_dir, disable_aslr=bool(no_aslr_prefix()))
        environ = {**self._environ(launch), **counting.counting_environ(dump_dir)}
        self._counting_log = open(self.work_dir / "native-counting-agent.log", "w", encoding="utf-8")  # noqa: SIM115
        self._counting = PipeTransport(spawn_piped(argv, environ, cwd=launch.project_dir), self._counting_log)
        return self._counting

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._close_counting()

    def _close_counting(self) -> None:
        if self._counting is not None:
            self._counting.close()
            self._counting = None
        if self._counting_log is not None:
            self._counting_log.close()
            self._counting_log = None
        if self._dumps is not None:
            self._dumps.__exit__(None, None, None)
            self._dumps = None

    @staticmethod
    def _environ(launch: AgentLaunch) -> dict[str, str]:
        env = dict(os.environ)
        env.update(launch.environ())
        existing = os.environ.get("PYTHONPATH")
        if existing:
            env["PYTHONPATH"] = launch.pythonpath + os.pathsep + existing
        return env

    @property
    def fixed_layout(self) -> bool:
        return bool(self._layout_prefix)

    def describe(self) -> Mapping[str, Any]:
        return {"python": self.python, **self.match_facts()}

    def match_facts(self) -> Mapping[str, Any]:
        # A test's speed depends on where its process landed: with ASLR off every session
        # lands the same way, with it on each lands anew. Sessions of one kind only are
        # compared with each other.
        return {"aslr": "off" if self.fixed_layout else "on"}
