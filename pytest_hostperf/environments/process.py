"""Child processes of the controller: start, stop, tell whether one still runs, read its log.

One place for what the backends used to do three ways each: every child gets its own
session (a Ctrl-C in the terminal is the controller's to handle, and the whole tree can
be signalled at once), and may ask to die with the controller (``PR_SET_PDEATHSIG``,
Linux); stopping one means SIGTERM to its group, a grace period, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Final, Mapping, Sequence

_PR_SET_PDEATHSIG: Final = 1
_TAIL_BYTES: Final = 16384


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGKILL this process when the thread that started it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def spawn(argv: Sequence[str], *, stdin: int | IO[bytes] | None = subprocess.DEVNULL,
          stdout: int | IO[bytes] | None = None, stderr: int | IO[bytes] | None = None,
          env: Mapping[str, str] | None = None, cwd: str | None = None,
          die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` (never through a shell) in a new session.

    ``die_with_parent``: on Linux the child is SIGKILLed when the controller dies, so a
    VM cannot outlive a SIGKILLed session (elsewhere the next sweep removes it). The
    signal follows the *thread* that spawned the child: spawn from a thread that lives
    as long as the child should.
    """
    preexec = _die_with_parent if die_with_parent and sys.platform.startswith("linux") else None
    return subprocess.Popen(  # noqa: S603 - argv list, never a shell
        list(argv), stdin=stdin, stdout=stdout, stderr=stderr, env=dict(env) if env is not None else None,
        cwd=cwd, start_new_session=True, preexec_fn=preexec, bufsize=0)


@functools.cache
def no_aslr_prefix(machine: str | None = None) -> tuple[str, ...]:
    """``setarch <machine> -R``: the prefix that starts a command without address-space
    randomisation, or ``()`` where that does not work here (no ``setarch``, or a seccomp
    profile that refuses the personality, as Docker's default one does). Probed once.

    Why: two processes of the same code at different random addresses run a tight Python
    loop at different speeds, for their whole life. Interleaved pairs of two identical
    processes read 0.950-1.051x with ASLR and 0.995-1.003x without it (10 process pairs
    each, 150 pairs of rounds, this 2-core machine); an environment larger by 1-4000
    bytes moves them by at most 1.3% (``benchmarks/aslr_pairs.py``, results/aslr-pairs.log).
    """
    prefix = ("setarch", machine or platform.machine(), "-R")
    if shutil.which("setarch") is None:
        return ()
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if done.returncode == 0 else ()


def spawn_piped(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """A child with stdin, stdout and stderr as pipes (an agent speaking the protocol)."""
    return spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)


def spawn_logged(argv: Sequence[str], log: Path, die_with_parent: bool = False,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child whose stdout and stderr are appended to ``log`` (qemu, virtiofsd)."""
    with open(log, "ab") as out:
        return spawn(argv, stdout=out, stderr=subprocess.STDOUT, env=env, die_with_parent=die_with_parent)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 0.0) -> None:
    """End ``proc`` and everything in its process group; reap it. Idempotent.

    With ``grace`` > 0 the group gets SIGTERM first and that long to leave. The group is
    signalled only while the leader is not reaped yet: until then its pid, and so the
    group id, cannot belong to anybody else.
    """
    if proc is None or proc.returncode is not None:
        return
    if grace > 0:
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.02)
    _signal_group(proc, signal.SIGKILL)  # the rest of the group (virtiofsd forks, test children)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the leader has exited, without reaping it (its pid stays reserved)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
    except (AttributeError, OSError):
        return proc.poll() is not None


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(signum)
        except OSError:
            pass


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A SIGKILLed process stays a zombie until reaped: dead here."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal check above is all there is
    return state != "Z"


def process_start(pid: int) -> str | None:
    """When ``pid`` started, as an exact token: tells a reused pid from its first owner.

    Linux: clock ticks since boot from ``/proc/PID/stat``; elsewhere psutil's creation time.
    """
    try:
        return "t" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        import psutil

        return f"c{psutil.Process(pid).create_time():.2f}"
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return None


def process_uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as, or None when it cannot be read."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process(pid).uids().real)
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return None


def command_line(pid: int) -> list[str] | None:
    """The arguments ``pid`` was started with, exactly (None when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1]]
    except OSError:
        pass
    try:
        import psutil

        return list(psutil.Process(pid).cmdline())
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return None


#: How Python's faulthandler starts a crash report (pytest enables it in every agent).
_FATAL_ERROR: Final = "Fatal Python error: "


def tail_lines(text: str, count: int = 20) -> str:
    """The last ``count`` non-empty lines of ``text`` (for error messages).

    A crash report of Python's faulthandler (a segfault, an abort) is the exception: its
    first lines name the signal and the crashing frames, its last ones only the
    interpreter's start-up, so the report's head is returned instead.
    """
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    crash = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(_FATAL_ERROR)), None)
    if crash is not None:
        return "\n".join(lines[crash:crash + count])
    return "\n".join(lines[-count:])


def signal_name(number: int) -> str:
    """``signal 11 (SIGSEGV)``: the number people search for and the name they know."""
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def tail_file(path: Path, count: int = 40) -> str:
    """The last ``count`` lines of a log file; "" when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(line.rstrip("\r") for line in text.splitlines()[-count:])
