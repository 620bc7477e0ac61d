"""A minimal controller for counting agents, natively and in Docker (benchmarks and tests).

The plugin's controller will start counting agents through its own environment backends;
this stand-in speaks the same protocol over a child's stdin/stdout so the counting
mechanism can be measured and tested on its own:

    with CountingAgent.native(project_dir, ["tests/test_x.py"]) as agent:
        result = agent.count("tests/test_x.py::test_parse")
        result["instructions"]["per_call"]

Docker agents run in a throw-away ``docker run -i --rm`` container (no network, no
capabilities, project and package read-only, dumps on a tmpfs), labelled and named so
that :meth:`CountingAgent.close` removes it even when the agent hangs.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytest_hostperf import counting  # noqa: E402
from pytest_hostperf.agent import protocol  # noqa: E402

DOCKER_DUMP_DIR = "/hostperf-callgrind"
DOCKER_TMPFS = "/hostperf-tmpfs"   # a writable directory for hostperf_dir tests
DOCKER_LABEL = "io.hostperf.h5-counting"


class AgentError(RuntimeError):
    """The counting agent died, hung or answered nonsense; the message has its log tail."""


class CountingAgent:
    def __init__(self, argv: list[str], env: dict[str, str] | None, cwd: str | None, *,
                 cleanup: list[str] | None = None, dumps: counting.DumpDirectory | None = None) -> None:
        self._log = tempfile.TemporaryFile()
        started = time.perf_counter()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        env=env, cwd=cwd, start_new_session=True)
        self._cleanup = cleanup or []
        self._dumps = dumps
        self._pending = b""
        self.container = cleanup[-1] if cleanup else None
        self._pid: int | None = None
        try:
            self.ready = self._receive(timeout=600)
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - started
        if self.ready.get("event") != "ready":
            self.close()
            raise AgentError(f"agent did not start: {self.ready}")

    # -- launchers ----------------------------------------------------------------------

    @classmethod
    def native(cls, project: Path, test_files: Sequence[str], *, python: str | None = None,
               allocator: str | None = counting.DEFAULT_ALLOCATOR, valgrind: bool = True,
               extra_env: dict[str, str] | None = None, dump_dir: str | None = None) -> CountingAgent:
        """A counting agent (or, with ``valgrind=False``, a plain timing agent) on this host.

        Dumps go to a :class:`counting.DumpDirectory` slot unless ``dump_dir`` is given
        (the caller's, which it must remove).
        """
        python = python or os.path.realpath(sys.executable)
        problem = counting.interpreter_problem(python)
        if problem:
            raise AgentError(problem)
        argv = _agent_argv(python, "native", str(project), test_files)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HOSTPERF_"))}
        env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", PYTEST_ADDOPTS="", **(extra_env or {}))
        dumps = counting.DumpDirectory() if valgrind and dump_dir is None else None
        if valgrind:
            dump_dir = dump_dir or dumps.__enter__()  # type: ignore[union-attr]
            argv = counting.counting_argv(argv, dump_dir, disable_aslr=shutil.which("setarch") is not None)
            env.update(counting.counting_environ(dump_dir, allocator))
        try:
            return cls(argv, env, str(project), dumps=dumps)
        except BaseException:
            if dumps is not None:
                dumps.__exit__(None, None, None)
            raise

    @classmethod
    def docker(cls, image: str, python: str, project: Path, test_files: Sequence[str], *,
               allocator: str | None = counting.DEFAULT_ALLOCATOR,
               extra_env: dict[str, str] | None = None) -> CountingAgent:
        """A counting agent in a fresh container of ``image`` (which must have valgrind)."""
        name = f"hostperf-h5-count-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        agent = _agent_argv(python, "docker", "/project", test_files)
        # setarch -R is refused by Docker's default seccomp profile (personality).
        argv = counting.counting_argv(agent, DOCKER_DUMP_DIR, disable_aslr=False)
        environ = {"PYTHONPATH": "/hostperf", "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_ADDOPTS": "",
                   **counting.counting_environ(DOCKER_DUMP_DIR, allocator), **(extra_env or {})}
        docker = ["docker", "run", "-i", "--rm", "--name", name, "--label", f"{DOCKER_LABEL}={os.getpid()}",
                  "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                  "--mount", f"type=bind,src={project},dst=/project,readonly",
                  "--mount", f"type=bind,src={REPO / 'pytest_hostperf'},dst=/hostperf/pytest_hostperf,readonly",
                  "--tmpfs", f"{DOCKER_DUMP_DIR}:rw,size=64m", "--tmpfs", f"{DOCKER_TMPFS}:rw,size=64m",
                  "-w", "/project"]
        for key, value in environ.items():
            docker += ["-e", f"{key}={value}"]
        return cls(docker + [image] + argv, None, None, cleanup=["docker", "rm", "-f", name])

    # -- requests -------------------------------------------------------------------------

    def count(self, nodeid: str, mount_path: str | None = None, timeout: float = 900,
              **options: Any) -> dict[str, Any]:
        """The agent's answer to a ``count`` request for ``nodeid``."""
        return self.request({"op": "count", "nodeid": nodeid, "mount": "host", "mount_path": mount_path,
                             **options}, timeout)

    def run(self, nodeid: str, mount_path: str | None = None, timeout: float = 900) -> dict[str, Any]:
        """The agent's answer to a timing ``run`` request (a non-valgrind agent)."""
        return self.request({"op": "run", "nodeid": nodeid, "mount": "host", "mount_path": mount_path,
                             "benchmark_options": {}}, timeout)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the agent and its zygote's counting children so far.

        Read from the host's /proc: the agent, its direct children (the zygote) and the
        children the zygote has reaped (one per count), for a container too.
        """
        if self._pid is None:
            self._pid = self.process.pid
            if self.container:
                inspect = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", self.container],
                                         capture_output=True, text=True, check=True)
                self._pid = int(inspect.stdout.strip())
        total = _stat_seconds(self._pid, with_reaped=False)
        with open(f"/proc/{self._pid}/task/{self._pid}/children", encoding="ascii") as children:
            for child in children.read().split():
                total += _stat_seconds(int(child), with_reaped=True)
        return total

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.process.stdin.write(protocol.encode(message))  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._receive(timeout)

    def log_tail(self, lines: int = 30) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Shut the agent down; kill it (and its container) if it does not go."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write(protocol.encode({"op": "shutdown"}))  # type: ignore[union-attr]
                self.process.stdin.close()  # type: ignore[union-attr]
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._cleanup:
            subprocess.run(self._cleanup, capture_output=True, check=False)
        if self._dumps is not None:
            self._dumps.__exit__(None, None, None)
        self._log.close()

    def __enter__(self) -> CountingAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                message = protocol.decode(line)
                if message is not None:
                    if message.get("event") == "fatal":
                        raise AgentError(f"agent fatal: {message.get('message')}\n{self.log_tail()}")
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentError(f"no answer within {timeout:.0f} s\n{self.log_tail()}")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise AgentError(f"agent exited with {self.process.wait()}\n{self.log_tail()}")
                self._pending += chunk


def _stat_seconds(pid: int, with_reaped: bool) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if with_reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _agent_argv(python: str, env: str, rootdir: str, test_files: Sequence[str]) -> list[str]:
    return [python, "-m", "pytest_hostperf.agent", "--env", env, "--rootdir", rootdir, "--",
            *test_files]


# -- a scratch image with Debian's valgrind (the change images/base.py needs, proved) ---------

SCRATCH_TAG = "hostperf-h5-valgrind:scratch"
VALGRIND_DEBS = ("valgrind", "libc6-dbg")   # valgrind's Depends on Debian 12, besides libc6


def project_image() -> tuple[str, str]:
    """(tag, interpreter path) of the newest hostperf project image on this engine."""
    listing = subprocess.run(["docker", "images", "--filter", "label=io.hostperf.kind=project",
                              "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=True)
    tags = [tag for tag in listing.stdout.split()
            if not tag.endswith(":<none>") and not tag.startswith(SCRATCH_TAG.split(":")[0])]
    if not tags:
        raise AgentError("no hostperf project image here: run `hostperf image build` in example_project first")
    python = subprocess.run(["docker", "inspect", "-f", '{{index .Config.Labels "io.hostperf.python"}}', tags[0]],
                            capture_output=True, text=True, check=True).stdout.strip()
    return tags[0], python


def build_valgrind_image(base: str, tag: str = SCRATCH_TAG) -> float:
    """Build ``tag`` FROM ``base`` plus valgrind's .debs downloaded on this (Debian 12) host.

    The build has no network: the packages come from ``apt-get download`` here, as the
    base image's own packages come from the host's mirror. Returns the build seconds.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostperf-h5-image-") as context:
        debs = Path(context, "debs")
        debs.mkdir()
        os.chmod(debs, 0o777)  # apt's _apt user downloads into it
        subprocess.run(["apt-get", "download", *VALGRIND_DEBS], cwd=debs, capture_output=True, check=True)
        Path(context, "Dockerfile").write_text(
            f"FROM {base}\nCOPY debs /tmp/debs\n"
            "RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs && valgrind --version\n")
        subprocess.run(["docker", "build", "--network", "none", "-q", "-t", tag,
                        "--label", f"{DOCKER_LABEL}=scratch", context], capture_output=True, check=True)
    return time.perf_counter() - started
