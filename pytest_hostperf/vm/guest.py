"""Boot a hostperf VM disk and run one command in it through the guest bootstrap.

The qemu environment runs the agent this way; :class:`GuestVM` does the same for any
command (a probe, the Docker engine of ``docker@qemu``): it boots the disk through a
throwaway qcow2 overlay, waits for the bootstrap's hello on the virtio-serial port,
sends the launch message (mounts, network, argv) and hands back the port, on which the
command's stdout arrives and its stdin can be written. The bootstrap powers the VM off
when the command exits.

The VM's work dir lives under the qemu backend's session root with the same
``owner.json``, so :func:`pytest_hostperf.environments.qemu.sweep_stale` removes
what a killed controller left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from pytest_hostperf import vmimage
from pytest_hostperf.environments import qemu as qemu_backend

__all__ = ["GuestVM", "GuestError", "Drive", "LaunchSpec"]

LAUNCH_PREFIX = b"@@hostperf-launch@@ "
_EXIT_STATUS = re.compile(r"hostperf-boot: agent exited with status (-?\d+)")


class GuestError(Exception):
    """The VM did not boot, or the command in it failed; carries the console tail."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        self.console_tail = console_tail
        text = message + ("\n  console:\n" + "\n".join("    " + line for line in console_tail.splitlines()[-25:])
                          if console_tail else "")
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class Drive:
    """An extra disk: ``path`` (raw or qcow2), attached as virtio-blk (/dev/vdb, ...)."""

    path: Path
    fmt: str = "raw"
    readonly: bool = False
    cache: str = "unsafe"   # "writeback" when the data must survive (a cache being built)


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """What the bootstrap does before it runs ``argv``: the launch message."""

    argv: Sequence[str]
    mounts: Sequence[Mapping[str, str]] = ()
    network: Optional[Mapping[str, str]] = None
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def message(self) -> bytes:
        body = {"argv": list(self.argv), "mounts": [dict(m) for m in self.mounts],
                "environ": dict(self.environ), "cwd": "/"}
        if self.network is not None:
            body["network"] = dict(self.network)
        return LAUNCH_PREFIX + json.dumps(body).encode() + b"\n"


#: qemu user networking's fixed guest addresses (what the bootstrap configures).
USER_NETWORK: Mapping[str, str] = {"address": "10.0.2.15", "netmask": "255.255.255.0",
                                   "gateway": "10.0.2.2", "dns": "10.0.2.3"}


class GuestVM:
    """One VM booted from ``disk`` with ``kernel``/``initrd`` and extra qemu arguments.

    ``qemu_args`` carries the topology's pieces (``-virtfs ...``, ``-nic user,...``);
    ``drives`` are extra virtio-blk disks after the root disk (/dev/vdb, ...).
    The root disk is virtio-blk when an initrd is given (it loads the driver), else NVMe
    (the cloud kernel has it built in).
    """

    def __init__(self, disk: Path, kernel: Path, initrd: Optional[Path] = None, *,
                 session_id: str, qemu_args: Sequence[str] = (), drives: Sequence[Drive] = (),
                 memory_mb: int = 1024, vcpus: int = 1, accel: str = "tcg",
                 shared_memory: bool = False) -> None:
        self.disk = Path(disk)
        self.kernel = Path(kernel)
        self.initrd = Path(initrd) if initrd else None
        self.session_id = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id)[:32]
        self.qemu_args = list(qemu_args)
        self.drives = list(drives)
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.accel = accel
        self.shared_memory = shared_memory   # vhost-user (virtiofs) needs shared guest RAM
        self.workdir: Optional[Path] = None
        self.boot_s: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None
        self._sock: Optional[socket.socket] = None
        self._pending = b""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "GuestVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def make_workdir(self) -> Path:
        """Create the session dir (owner.json for the sweep); idempotent."""
        if self.workdir is None:
            root = qemu_backend.session_root()
            root.mkdir(parents=True, exist_ok=True)
            workdir = root / self.session_id
            workdir.mkdir()
            owner = {"session_pid": os.getpid(), "session_id": self.session_id,
                     "pid_started": qemu_backend._process_start(os.getpid()), "created": time.time()}
            (workdir / "owner.json").write_text(json.dumps(owner))
            self.workdir = workdir
        return self.workdir

    def argv(self) -> list:
        """The qemu command line (the work dir must exist)."""
        workdir = self.make_workdir()
        root = "virtio" if self.initrd else "nvme"
        append = [f"root=/dev/{'vda' if root == 'virtio' else 'nvme0n1'}", "console=ttyS0", "rw",
                  "rootfstype=ext4", f"init={vmimage.GUEST_INIT}", "panic=-1", "quiet", "loglevel=3",
                  "random.trust_cpu=on", "tsc=reliable", "mitigations=off"]
        argv = [qemu_backend.find_qemu() or "qemu-system-x86_64",
                "-name", f"hostperf-{self.session_id},process=hostperf-{self.session_id}",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-m", str(self.memory_mb), "-smp", str(self.vcpus),
                "-pidfile", str(workdir / "qemu.pid"), "-kernel", str(self.kernel),
                "-serial", f"file:{workdir / 'console.log'}",
                "-device", "virtio-rng-pci", "-device", "virtio-serial-pci",
                "-chardev", f"socket,path={workdir / 'agent.sock'},server=on,wait=off,id=agent",
                "-device", f"virtserialport,chardev=agent,name={vmimage.AGENT_PORT_NAME}",
                "-drive", f"file={workdir / 'overlay.qcow2'},if=none,id=root,format=qcow2,cache=unsafe"]
        if self.accel == "kvm":
            argv += ["-accel", "kvm", "-cpu", "host"]
        else:
            argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
        argv += ["-device", "virtio-blk-pci,drive=root" if root == "virtio"
                 else "nvme,drive=root,serial=hostperf-root"]
        if self.initrd:
            argv += ["-initrd", str(self.initrd)]
        for index, drive in enumerate(self.drives):
            argv += ["-drive", f"file={drive.path},if=none,id=data{index},format={drive.fmt},cache={drive.cache}"
                     + (",readonly=on" if drive.readonly else ""),
                     "-device", f"virtio-blk-pci,drive=data{index}"]
        if self.shared_memory:
            argv += ["-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                     "-machine", "memory-backend=mem"]
        if "-nic" not in self.qemu_args and "-netdev" not in self.qemu_args:
            argv += ["-nic", "none"]   # no network unless the topology brings its own
        argv += self.qemu_args + ["-append", " ".join(append)]
        return argv

    def boot(self, timeout: float = 180.0) -> float:
        """Start qemu and wait for the bootstrap's hello; return the boot time in seconds."""
        workdir = self.make_workdir()
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.disk.resolve()),
                               "-F", "raw", str(workdir / "overlay.qcow2")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise GuestError(f"qemu-img could not create an overlay on {self.disk}: "
                             f"{proc.stdout.decode(errors='replace').strip()}")
        argv = self.argv()
        (workdir / "qemu.argv").write_text(json.dumps(argv))
        started = time.monotonic()
        self._proc = qemu_backend._spawn(argv, workdir / "qemu.log")
        deadline = started + timeout
        buffer = b""
        while True:
            if self._proc.poll() is not None:
                raise GuestError(f"qemu exited with status {self._proc.returncode} before the guest was up: "
                                 f"{qemu_backend._tail(workdir / 'qemu.log', 5)}", self.console())
            if time.monotonic() > deadline:
                raise GuestError(f"the guest bootstrap did not say hello within {timeout:.0f} s", self.console())
            if self._sock is None:
                self._sock = self._connect(workdir / "agent.sock")
                if self._sock is None:
                    time.sleep(0.02)
                    continue
            ready, _, _ = select.select([self._sock], [], [], 0.1)
            if not ready:
                continue
            data = self._sock.recv(65536)
            if not data:
                self._sock.close()
                self._sock = None
                time.sleep(0.05)
                continue
            buffer += data
            marker = buffer.find(vmimage.BOOT_MARKER)
            if marker >= 0 and b"\n" in buffer[marker:]:
                self._pending = buffer[buffer.index(b"\n", marker) + 1:]
                self.boot_s = time.monotonic() - started
                return self.boot_s

    @staticmethod
    def _connect(path: Path) -> Optional[socket.socket]:
        if not path.exists():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None
        return sock

    def launch(self, spec: LaunchSpec) -> None:
        """Send the launch message: the bootstrap mounts, configures, then runs argv."""
        if self._sock is None:
            raise GuestError("launch() before boot()")
        self._sock.sendall(spec.message())

    def send(self, data: bytes) -> None:
        """Write to the command's stdin (the agent port)."""
        assert self._sock is not None
        self._sock.sendall(data)

    def read_all(self, timeout: float) -> bytes:
        """The command's stdout until it exits (the port closes) or ``timeout`` passes."""
        assert self._sock is not None
        out, self._pending = self._pending, b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._sock], [], [], min(0.5, max(0.0, deadline - time.monotonic())))
            if ready:
                data = self._sock.recv(65536)
                if not data:
                    return out
                out += data
            elif self._proc is not None and self._proc.poll() is not None:
                return out
        raise GuestError(f"the command in the VM did not finish within {timeout:.0f} s "
                         f"(output so far: {out[-500:].decode(errors='replace')!r})", self.console())

    def run(self, spec: LaunchSpec, timeout: float = 300.0) -> tuple:
        """Launch ``spec`` and wait until the VM powers off; return (exit status, stdout text)."""
        self.launch(spec)
        out = self.read_all(timeout).decode(errors="replace")
        self.wait_exit(30.0)
        match = None
        for match in _EXIT_STATUS.finditer(self.console(200)):
            pass
        if match is None:
            raise GuestError("the guest bootstrap did not report the command's exit status", self.console())
        return int(match.group(1)), out

    def wait_exit(self, timeout: float) -> Optional[int]:
        """Wait for qemu to end by itself (the guest powered off); its status or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def console(self, lines: int = 40) -> str:
        if self.workdir is None:
            return ""
        return qemu_backend._tail(self.workdir / "console.log", lines)

    def stop(self) -> None:
        """Kill qemu (if it still runs) and remove the work dir. Never raises."""
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        qemu_backend._kill(self._proc, 3.0)
        self._proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
