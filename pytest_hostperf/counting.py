"""Instruction counting, controller side: start a counting agent, say where it works, judge.

The counting agent is the ordinary agent (``python -m pytest_hostperf.agent``) started
under callgrind by :func:`counting_argv` with :func:`counting_environ`; it answers
``count`` requests (see :mod:`pytest_hostperf.agent.count_benchmark`). It is a second
agent per environment, beside the timing agent, because valgrind slows everything it
runs (~10x uninstrumented, ~70x counted) and must never touch a timing.

:func:`judge_instructions` and :func:`attribute` are the verdict rules for counts (pure).
Nothing here imports pytest.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any, Callable, Final, Mapping, Sequence

from pytest_hostperf.agent import protocol
from pytest_hostperf.agent.instructions import DUMP_DIR_VARIABLE, DUMP_FILE_NAME

#: Callgrind with instrumentation and collection off until the agent's client requests
#: switch them on around the counted calls. ``--vgdb=no``: no FIFOs in /tmp that a
#: killed run would leave behind.
VALGRIND_OPTIONS: Final = ("--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no", "--vgdb=no", "-q")
#: pymalloc's pool state makes a counted block of allocation-heavy code take one of two
#: paths, ~1% apart, depending on the process's history (measured: benchmarks/results/
#: instructions-methods.log); glibc malloc does not. Counting uses it; timing never does.
DEFAULT_ALLOCATOR: Final = "malloc"
DEFAULT_TOLERANCE: Final = 0.01
#: How much slower than native a VM may run CPU work before counting inside it is refused.
MAX_VM_SLOWDOWN: Final = 2.0


class CountingSetupError(Exception):
    """The counting agent cannot be started as asked; the message says why and the fix."""


# -- starting the counting agent ----------------------------------------------------------

def interpreter_problem(python: str) -> str | None:
    """Why ``python`` cannot run under valgrind (a script, not a binary), or None.

    A pyenv shim is a shell script: valgrind would count the shell, and the real
    interpreter it execs would run uncounted. A symlink to a binary is fine (and a
    venv's ``bin/python`` must be run through its symlink to find its ``pyvenv.cfg``).
    """
    real = os.path.realpath(python)
    try:
        with open(real, "rb") as binary:
            magic = binary.read(4)
    except OSError as exc:
        return f"cannot read the interpreter {python} ({exc})"
    if magic.startswith(b"#!"):
        return (f"{python} is a script ({real}), not the interpreter binary (a pyenv shim?): valgrind would count the "
                "script's shell; use the real interpreter, e.g. ~/.pyenv/versions/X.Y.Z/bin/pythonX.Y or a venv's "
                "bin/python")
    if magic != b"\x7fELF":
        return f"{python} ({real}) is not an ELF executable, which valgrind needs"
    return None


def counting_argv(agent_argv: Sequence[str], dump_dir: str, *, valgrind: str = "valgrind",
                  disable_aslr: bool = True, machine: str | None = None) -> list[str]:
    """The command that runs ``agent_argv`` (``[python, "-m", ...]``) as a counting agent.

    ``dump_dir`` is a directory of this agent alone inside the environment (callgrind
    writes a small file per counted block there; the agent removes each after reading).
    ``disable_aslr`` prefixes ``setarch <machine> -R``; Docker's default seccomp profile
    refuses that personality, so pass False there: under valgrind the client's memory
    is laid out by valgrind itself, the same from run to run even with ASLR on
    (measured), so counts do not depend on it.
    """
    if not agent_argv:
        raise CountingSetupError("counting_argv needs the agent's command line, got an empty one")
    prefix = ["setarch", machine or platform.machine(), "-R"] if disable_aslr else []
    return [*prefix, valgrind, *VALGRIND_OPTIONS, f"--callgrind-out-file={dump_dir.rstrip('/')}/{DUMP_FILE_NAME}",
            *agent_argv]


def counting_environ(dump_dir: str, allocator: str | None = DEFAULT_ALLOCATOR) -> dict[str, str]:
    """Variables the counting agent needs on top of the normal agent's."""
    environ = {"PYTHONHASHSEED": "0", DUMP_DIR_VARIABLE: dump_dir.rstrip("/") or "/"}
    if allocator:
        environ["PYTHONMALLOC"] = allocator
    return environ


class DumpDirectory:
    """A dump directory whose path is the same in every session: ``<base>/slot-<nn>``.

    Callgrind keeps the ``--callgrind-out-file`` path in its own memory, which shares the
    address space with the program; with a random directory name (``mkdtemp``), 2 of 8
    sessions counted a JSON round trip 0.05-0.4% differently, with a fixed one 18 of 18
    agreed (benchmarks/results/instructions-methods.log). So the native counting agent
    takes the lowest free slot (``flock`` on the directory, held for the session; slot 0
    unless sessions run at the same time) and empties it on the way in and out. Slots
    are named with two digits, so that all have one length: the characters of the path
    do not move counts (slot-7, -8 and -9 counted a JSON round trip exactly alike,
    measured), but the sizes of what the process starts with move its heap.
    ``with DumpDirectory() as path:``.
    """

    def __init__(self, base: str | None = None, slots: int = 16) -> None:
        self.base = base or os.path.join(tempfile.gettempdir(), f"hostperf-callgrind-{os.getuid()}")
        self.slots = slots
        self.path: str | None = None
        self._fd: int | None = None

    def __enter__(self) -> str:
        os.makedirs(self.base, mode=0o700, exist_ok=True)
        for slot in range(self.slots):
            path = os.path.join(self.base, f"slot-{slot:02d}")
            os.makedirs(path, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Locked the directory that is there now, not one its last owner removed.
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            self.path, self._fd = path, fd
            self._empty()
            return path
        raise CountingSetupError(f"all {self.slots} counting dump slots under {self.base} are in use by other "
                                 "hostperf sessions; wait for one to end or pass another base directory")

    def __exit__(self, *exc_info: object) -> None:
        if self.path is None or self._fd is None:
            return
        self._empty()
        try:
            os.rmdir(self.path)
        except OSError:
            pass
        os.close(self._fd)  # releases the lock
        self.path = self._fd = None

    def _empty(self) -> None:
        assert self._fd is not None
        for name in os.listdir(self._fd):
            try:
                os.unlink(name, dir_fd=self._fd)
            except OSError:
                pass


# -- where counting works -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CountingSupport:
    """Whether one environment can count instructions, and why not."""

    environment: str
    works: bool
    reason: str | None = None
    per_call: float | None = None       # the probe's count, for the curious
    noise: float | None = None
    software: Mapping[str, Any] | None = None

    def describe(self) -> str:
        if self.works:
            return f"{self.environment}: instruction counting works (probe noise {100 * (self.noise or 0):.4f}%)"
        return f"{self.environment}: no instruction counting, timings only: {self.reason}"


def refusal(environment: str, *, machine: str, slowdown: float | None = None,
            valgrind: str | None = "valgrind") -> CountingSupport | None:
    """The environment's support decided without running anything, or None: probe it.

    ``slowdown`` is how much slower than native the environment runs CPU work (a VM
    under TCG: ~12x here); ``valgrind`` its valgrind path, None when it has none.
    """
    if machine.lower() not in ("x86_64", "amd64"):
        return CountingSupport(environment, False, f"the counting helper supports x86-64 only, this is {machine}")
    if slowdown is not None and slowdown > MAX_VM_SLOWDOWN:
        return CountingSupport(environment, False, (
            f"it runs CPU work ~{slowdown:.0f}x slower than native (software emulation): counted code would run "
            f"~{70 * slowdown:.0f}x slower than native; the same software counts the same instructions natively or "
            "in docker"))
    if valgrind is None:
        return CountingSupport(environment, False, "valgrind is not installed there (Debian/Ubuntu: apt-get install "
                                                   "valgrind; hostperf images: see docs/instructions.md)")
    return None


def parse_probe(environment: str, returncode: int, stdout: bytes, stderr: str) -> CountingSupport:
    """The support an environment reported from :mod:`pytest_hostperf.agent.count_probe`."""
    for line in stdout.splitlines():
        message = protocol.decode(line)
        if message and message.get("event") == "count-probe":
            return CountingSupport(environment, bool(message.get("works")), message.get("reason"),
                                   message.get("per_call"), message.get("noise"), message.get("software"))
    tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no output"
    hint = " (valgrind or setarch missing?)" if returncode in (126, 127) else ""
    return CountingSupport(environment, False, f"the counting probe exited with {returncode}{hint}: {tail}")


Runner = Callable[[Sequence[str], Mapping[str, str]], "tuple[int, bytes, str]"]


def probe(environment: str, python: str, pythonpath: str, run: Runner, dump_dir: str, *,
          disable_aslr: bool = True, machine: str | None = None) -> CountingSupport:
    """Run the counting probe in an environment through ``run(argv, environ)``.

    ``run`` executes inside the environment (a subprocess natively, ``docker exec`` in a
    container, ...) and returns ``(returncode, stdout, stderr)``; ``dump_dir`` must
    exist and be writable there; ``pythonpath`` holds ``pytest_hostperf`` there.
    """
    argv = counting_argv([python, "-m", "pytest_hostperf.agent.count_probe"], dump_dir,
                         disable_aslr=disable_aslr, machine=machine)
    environ = {"PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1", **counting_environ(dump_dir)}
    return parse_probe(environment, *run(argv, environ))


def probe_native(python: str | None = None, timeout: float = 300) -> CountingSupport:
    """Whether the host itself counts: refusal rules, interpreter check, then a real probe."""
    python = python or sys.executable
    decided = refusal("native", machine=platform.machine(), valgrind=shutil.which("valgrind"))
    if decided is not None:
        return decided
    problem = interpreter_problem(python)
    if problem:
        return CountingSupport("native", False, problem)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[int, bytes, str]:
        env = {**os.environ, **environ}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = environ["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
        try:
            done = subprocess.run(list(argv), env=env, capture_output=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            return 127, b"", str(exc)
        except subprocess.TimeoutExpired:
            return 124, b"", f"no answer within {timeout:.0f} s"
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    with DumpDirectory() as dump_dir:
        aslr_off = shutil.which("setarch") is not None
        return probe("native", python, package_root, run, dump_dir, disable_aslr=aslr_off)


def probe_docker(client: Any, image: str, python: str, timeout: float = 300) -> CountingSupport:
    """Whether containers of ``image`` count: the probe in a throw-away container.

    ``client`` is a docker-py client. The container gets what the docker environment's
    agent gets: no network, no capabilities, the package read-only, a tmpfs for the
    dumps; ``setarch -R`` is left out (Docker's default seccomp refuses it).
    """
    from docker.errors import DockerException
    from docker.types import Mount

    package = os.path.dirname(os.path.abspath(__file__))
    dump_dir, parent = "/hostperf-callgrind", "/opt/hostperf-probe"
    argv = counting_argv([python, "-m", "pytest_hostperf.agent.count_probe"], dump_dir, disable_aslr=False)
    environ = {"PYTHONPATH": parent, "PYTHONDONTWRITEBYTECODE": "1", **counting_environ(dump_dir)}
    container = None
    try:
        container = client.containers.create(
            image, argv, environment=environ, network_mode="none", cap_drop=["ALL"],
            security_opt=["no-new-privileges"], labels={PROBE_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
            mounts=[Mount(f"{parent}/pytest_hostperf", package, type="bind", read_only=True),
                    Mount(dump_dir, None, type="tmpfs")])
        container.start()
        code = int(container.wait(timeout=timeout).get("StatusCode", -1))
        stdout = container.logs(stdout=True, stderr=False)
        stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
    except DockerException as exc:
        hint = " (valgrind is not installed in the image)" if "valgrind" in str(exc) else ""
        return CountingSupport("docker", False, f"could not run the counting probe in {image}{hint}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a timeout of wait() comes from requests; all become a reason
        return CountingSupport("docker", False, f"the counting probe in {image} did not finish: {exc!r}")
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except DockerException:
                pass
    return parse_probe("docker", code, bytes(stdout), stderr)


#: On the probe's container: who started it (host:pid), should it ever outlive its run.
PROBE_LABEL: Final = "io.hostperf.count-probe"
#: CPU-bound Python in a QEMU VM without KVM (TCG) runs ~12x slower than native here.
TCG_SLOWDOWN: Final = 12.0


def where_counting_works(*, docker_client: Any = None, docker_image: str | None = None,
                         docker_python: str | None = None,
                         qemu_accelerator: str | None = None) -> list[CountingSupport]:
    """What ``hostperf doctor`` lists: native always, docker and qemu when given.

    Runs real probes (a few seconds each under valgrind). ``qemu_accelerator`` is
    "kvm" or "tcg" as the qemu backend detected it.
    """
    supports = [probe_native()]
    if docker_client is not None and docker_image and docker_python:
        supports.append(refusal("docker", machine=platform.machine())
                        or probe_docker(docker_client, docker_image, docker_python))
    if qemu_accelerator == "tcg":
        supports.append(refusal("qemu", machine="x86_64", slowdown=TCG_SLOWDOWN)
                        or CountingSupport("qemu", True))  # (refusal() always answers for TCG)
    elif qemu_accelerator:
        supports.append(CountingSupport("qemu", False, (
            f"a {qemu_accelerator} VM could count with valgrind on its disk, but no probe runs through the VM's "
            "agent yet; the same software counts the same instructions natively or in docker")))
    return supports


# -- judging a count -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InstructionJudgement:
    verdict: str          # "pass" | "regression" | "improvement" | "unstable" (verdict.Verdict values)
    ratio: float          # per_call / baseline per_call
    noise: float          # the larger of the two counts' noise floors
    reason: str

    @property
    def changed(self) -> bool:
        return self.verdict in ("regression", "improvement")


def judge_instructions(per_call: float, baseline_per_call: float, *, noise: float = 0.0,
                       baseline_noise: float = 0.0, tolerance: float = DEFAULT_TOLERANCE) -> InstructionJudgement:
    """The verdict of a count against its baseline (same software fingerprint).

    Counts repeat exactly between sessions of the same software, so no statistics are
    needed: a change beyond ``tolerance`` is a regression/improvement, unless the test's
    own noise floor (two counts in one session) is so large that it could explain it
    (change <= 2 x noise): then ``unstable``.
    """
    if per_call <= 0 or baseline_per_call <= 0:
        raise ValueError(f"instruction counts must be positive, got {per_call} against {baseline_per_call}")
    ratio = per_call / baseline_per_call
    change = ratio - 1
    floor = max(noise, baseline_noise)
    text = f"instructions {100 * change:+.2f}%"
    if abs(change) <= tolerance:
        return InstructionJudgement("pass", ratio, floor, f"{text} (within {100 * tolerance:g}%)")
    if abs(change) <= 2 * floor:
        return InstructionJudgement("unstable", ratio, floor, (
            f"{text}, but two counts of this test in one session differ by {100 * floor:.2f}%"))
    return InstructionJudgement("regression" if change > 0 else "improvement", ratio, floor, text)


def attribute(instructions: InstructionJudgement | None, time_verdict: str,
              time_ratio_ci: tuple[float, float] | None = None, time_tolerance: float = 0.05) -> str:
    """Who moved: ``code`` (instructions), ``platform`` (only time), ``both`` or ``none``.

    Time that changed with the instructions is the code's doing when the time ratio
    divided by the instruction ratio stays within the time tolerance (the interval of
    that residual reaches back inside it); otherwise the platform moved as well: ``both``.
    Without a count (not measured here) only ``platform`` or ``none`` can be said.
    """
    time_changed = time_verdict in ("regression", "improvement", "overhead")
    if instructions is None or not instructions.changed:
        return "platform" if time_changed else "none"
    if not time_changed or time_ratio_ci is None:
        return "code"
    low, high = (bound / instructions.ratio for bound in time_ratio_ci)
    residual_beyond = low > 1 + time_tolerance or high < 1 - time_tolerance
    return "both" if residual_beyond else "code"
