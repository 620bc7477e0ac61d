"""Booting the VM: the accelerator to try, qemu itself, the wait for the guest, the transport.

Hardware acceleration is tried first (KVM on Linux, HVF on macOS). Whether it works is
decided within moments, not by a timeout: qemu's own error (it exits, or logs "KVM
internal error"), or, while probing, the guest's console staying silent. A probe boot
adds ``earlyprintk`` so the kernel's real-mode setup code writes to the serial port at
once; a guest that runs under the accelerator shows output within a fraction of a
second, one that does not shows nothing (nested KVM that hangs silently does exactly
that). The caller then falls back to TCG.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Final, Optional

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments.base import AgentDied, AgentTimeout, EnvironmentFailure, LineBuffer, Transport
from pytest_hostperf.environments.process import spawn_logged, stop_process, tail_file
from pytest_hostperf.environments.qemu.cmdline import QemuCommand
from pytest_hostperf.vm.model import VmDisk

ENV_NAME: Final = "qemu"
#: What qemu or the guest console says when the accelerator cannot run this guest.
_FATAL_PATTERNS: Final = (
    (re.compile(r"KVM internal error|KVM: entry failed|kvm run failed|failed to initialize kvm|"
                r"Could not access KVM kernel module", re.I),
     "the accelerator failed (nested virtualization often does not work)"),
    (re.compile(r"Kernel panic - not syncing:[^\n]*"), ""),
)


class AccelFailed(Exception):
    """An accelerator could not run the VM; the caller tries the next one."""


def find_qemu(binary: Optional[str] = None) -> Optional[str]:
    """Path of ``qemu-system-x86_64`` (or ``binary``), None when it is not installed."""
    return shutil.which(binary or "qemu-system-x86_64")


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=10, check=False).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def accelerators(request: str, platform: str, kvm: Path = Path("/dev/kvm")) -> tuple[list[str], Optional[str]]:
    """Accelerators to try in order, and why KVM is skipped when it is there but unusable."""
    if request != "auto":
        return [request], None
    if platform == "darwin":
        return ["hvf", "tcg"], None
    if kvm.exists() and os.access(kvm, os.R_OK | os.W_OK):
        return ["kvm", "tcg"], None
    if kvm.exists():
        return ["tcg"], f"{kvm} is not readable and writable by this user"
    return ["tcg"], None


def create_overlay(disk: VmDisk, overlay: Path) -> None:
    """A throwaway qcow2 over the cached (never modified) disk image."""
    overlay.unlink(missing_ok=True)
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.path), "-F", "raw",
                           str(overlay)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise EnvironmentFailure(ENV_NAME, f"qemu-img could not create the overlay on {disk.path}",
                                 log_tail=proc.stdout.decode(errors="replace"))


class Boot:
    """One qemu process from spawn until the guest bootstrap says hello on the agent port."""

    def __init__(self, command: QemuCommand, workdir: Path, die_with_parent: bool) -> None:
        self.command = command
        self.workdir = workdir
        self.qemu_log = workdir / "qemu.log"
        self.started = time.monotonic()
        for leftover in (command.console_log, self.qemu_log, command.agent_socket, command.pidfile):
            leftover.unlink(missing_ok=True)
        (workdir / "qemu.argv").write_text(json.dumps(command.argv()))
        self.proc: Optional[subprocess.Popen[bytes]] = spawn_logged(command.argv(), self.qemu_log, die_with_parent)
        self.hello: dict[str, Any] = {}

    def wait(self, timeout: float, probe: bool, first_output_s: float) -> tuple[socket.socket, bytes]:
        """The connected agent socket and what followed the hello; AccelFailed while probing."""
        try:
            return self._wait(timeout, probe, first_output_s)
        except BaseException:
            self.kill(patience=0.0)   # a boot that failed has nothing to power off cleanly
            raise

    def kill(self, patience: float = 2.0) -> None:
        """End qemu: give a guest that is powering off ``patience`` s, then terminate/kill it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(patience)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace=3.0)

    def _wait(self, timeout: float, probe: bool, first_output_s: float) -> tuple[socket.socket, bytes]:
        assert self.proc is not None
        deadline = self.started + timeout
        sock: Optional[socket.socket] = None
        buffer = b""
        while True:
            self._check_alive(probe)
            elapsed = time.monotonic() - self.started
            if probe and elapsed > first_output_s and not _has_output(self.command.console_log):
                raise AccelFailed(f"the guest wrote nothing to its console within {first_output_s:.0f} s "
                                  f"(it does not run under {self.command.accel.upper()} here)")
            if time.monotonic() > deadline:
                self._fail(f"the guest did not reach the agent port within {timeout:.0f} s", probe,
                           hint="look at the console output below; a slow host may need a longer boot_timeout",
                           log_tail=tail_file(self.command.console_log))
            if sock is None:
                sock = _connect(self.command.agent_socket)
                if sock is None:
                    time.sleep(0.02)
                    continue
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data = sock.recv(65536)
            except OSError:   # qemu went away; the next round sees why
                data = b""
            if not data:
                time.sleep(0.05)
                sock.close()
                sock = None
                continue
            buffer += data
            if len(buffer) > protocol.MAX_LINE_BYTES:
                self._fail("the guest sent garbage instead of its hello", probe, log_tail=tail_file(self.qemu_log))
            marker = buffer.find(protocol.BOOT_MARKER)
            if marker >= 0 and b"\n" in buffer[marker:]:
                end = buffer.index(b"\n", marker) + 1
                try:
                    self.hello = json.loads(buffer[marker + len(protocol.BOOT_MARKER):end])
                except ValueError:
                    self.hello = {}
                return sock, buffer[end:]

    def _check_alive(self, probe: bool) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        problem = self._problem()
        if code is None and not problem:
            return
        reason = problem or f"qemu exited with status {code}"
        detail = first_error(tail_file(self.qemu_log, 10)) if code is not None else ""
        if detail and detail not in reason:
            reason += f": {detail}"
        self._fail(f"the VM did not boot ({self.command.accel}): {reason}", probe, hint=boot_hint(reason),
                   log_tail=(tail_file(self.qemu_log, 10) + "\n" + tail_file(self.command.console_log)).strip(),
                   probe_reason=reason)

    def _problem(self) -> str:
        for path in (self.qemu_log, self.command.console_log):
            text = tail_file(path, 60)
            for pattern, meaning in _FATAL_PATTERNS:
                match = pattern.search(text)
                if match:
                    return f"{match.group(0).strip()} ({meaning})" if meaning else match.group(0).strip()
        return ""

    def _fail(self, message: str, probe: bool, hint: str = "", log_tail: str = "", probe_reason: str = "") -> None:
        if probe:
            raise AccelFailed(probe_reason or message)
        raise EnvironmentFailure(ENV_NAME, message, hint=hint, log_tail=log_tail)


def _has_output(console_log: Path) -> bool:
    try:
        return console_log.stat().st_size > 0
    except OSError:
        return False


def _connect(path: Path) -> Optional[socket.socket]:
    if not path.exists():
        return None
    candidate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        candidate.connect(str(path))
        return candidate
    except OSError:
        candidate.close()
        return None


def first_error(text: str) -> str:
    """The first line of qemu's output that reads like an error (else its last line)."""
    for line in text.splitlines():
        if "error" in line.lower() or "failed" in line.lower() or "assertion" in line.lower():
            return line.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def boot_hint(reason: str) -> str:
    if "panic" in reason.lower():
        return "the guest kernel panicked: check the kernel, the root disk and init= in the console output"
    if "kernel" in reason.lower() or "initrd" in reason.lower():
        return "qemu could not load the kernel: check the vmlinuz given to the qemu environment (or the VM disk's)"
    return "look at the qemu and console output below"


class QemuTransport(Transport):
    """The agent's virtio-serial port, seen through qemu's unix socket."""

    def __init__(self, sock: socket.socket, console_log: Path, on_close: Callable[[], None],
                 pending: bytes = b"", on_ready: Optional[Callable[[], None]] = None) -> None:
        self._sock = sock
        self._on_ready = on_ready
        self._console_log = console_log
        self._on_close = on_close
        self._buffer = LineBuffer(what="the agent in the VM")
        self._closed = False
        if pending:
            self._buffer.feed(pending)

    def send(self, data: bytes) -> None:
        if self._closed:
            raise AgentDied("the qemu transport is closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AgentDied(f"the VM's agent port went away: {exc}") from exc

    def read_line(self, deadline: float) -> bytes:
        while True:
            line = self._buffer.pop()
            if line is not None:
                if self._on_ready is not None and (protocol.decode(line) or {}).get("event") == "ready":
                    on_ready, self._on_ready = self._on_ready, None
                    on_ready()
                return line
            if self._closed:
                raise AgentDied("the qemu transport is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout("no message from the agent in the VM before the deadline")
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if not ready:
                continue
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise AgentDied(f"the VM's agent port went away: {exc}") from exc
            if not data:
                raise AgentDied("the VM's agent port closed (the agent exited or the VM stopped)")
            self._buffer.feed(data)

    def log_tail(self) -> str:
        parts = [tail_file(self._console_log), self._buffer.tail_text()]
        return "\n".join(p for p in parts if p)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        finally:
            self._on_close()
