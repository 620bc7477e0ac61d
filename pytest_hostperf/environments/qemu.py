"""The ``qemu`` environment: the agent inside a QEMU virtual machine.

The VM boots the cached disk from :mod:`pytest_hostperf.vmimage` through a throwaway
qcow2 overlay, straight into a tiny init (no systemd, no initrd when the kernel can
mount the root disk by itself), and runs the agent with stdin/stdout on a virtio-serial
port whose host end is a unix socket. The project and the ``pytest_hostperf`` package
reach the guest read-only through 9p or virtiofs (whatever the guest kernel has), or as
a copy on a second read-only disk when it has neither.

Hardware acceleration is tried first (KVM on Linux, HVF on macOS); when it fails to
start (nested KVM often does), the VM is restarted under TCG and the reason is kept in
:meth:`QemuEnvironment.describe`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pytest_hostperf import vmimage
from pytest_hostperf.environments.base import (
    AgentDied,
    AgentLaunch,
    AgentTimeout,
    Environment,
    EnvironmentFailure,
    LineBuffer,
    Mount,
    Transport,
    package_parent,
    session_alive,
    sweep_label,
)

__all__ = ["QemuEnvironment", "QemuTransport", "prepare_vm_disk", "sweep_stale", "session_root", "find_qemu"]

Progress = Callable[[str], None]

GUEST_PROJECT = "/hostperf/project"
GUEST_PKG = "/hostperf/pkg"
GUEST_SHARE = "/hostperf/share"
GUEST_TMPFS = "/hostperf/tmpfs"
GUEST_EXTRA = "/hostperf/extra"
GUEST_OWN = "/var/tmp/hostperf-guest"
LAUNCH_PREFIX = b"@@hostperf-launch@@ "
VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
_PR_SET_PDEATHSIG = 1


def session_root() -> Path:
    """Where every qemu session keeps its temp dir (overlay, sockets, logs, pidfile)."""
    return Path(tempfile.gettempdir()) / "pytest-hostperf-qemu"


def find_qemu(binary: Optional[str] = None) -> Optional[str]:
    """Path of ``qemu-system-x86_64`` (or ``binary``), None when it is not installed."""
    return shutil.which(binary or "qemu-system-x86_64")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGKILL this process when the controller (its parent) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(argv: list, log: Path, die_with_parent: bool = True) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,                       # a Ctrl-C in the terminal is ours to handle
            preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(line.rstrip("\r") for line in text.splitlines()[-lines:])


def _kill(proc: Optional[subprocess.Popen], grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    except OSError:
        pass


class QemuTransport(Transport):
    """The agent's virtio-serial port, seen through qemu's unix socket."""

    def __init__(self, sock: socket.socket, console_log: Path, on_close: Callable[[], None],
                 pending: bytes = b"", on_ready: Optional[Callable[[], None]] = None) -> None:
        self._sock = sock
        self._on_ready = on_ready
        self._console_log = console_log
        self._on_close = on_close
        self._buffer = LineBuffer()
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
                if self._on_ready is not None and b'"event":"ready"' in line:
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
        parts = [_tail(self._console_log)]
        extra = self._buffer.tail_text()
        if extra:
            parts.append(extra)
        return "\n".join(p for p in parts if p)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        finally:
            self._on_close()


@dataclasses.dataclass
class _Share:
    tag: str
    host_path: Path
    guest_path: str
    readonly: bool


class QemuEnvironment(Environment):
    """A QEMU VM booted once per session from a cached disk built from the docker image.

    ``disk`` is a prebuilt :class:`vmimage.VmDisk`; else ``vm_image`` (a VM disk
    directory with ``disk.json``, its ``disk.img``, or a root filesystem directory); else
    ``rootfs`` (directory, tar stream or chunks, identified by ``rootfs_key``) is turned
    into one; else the docker backend's project image (``images.ensure_image`` with
    ``image``/``requirements``) is exported.

    ``vcpus`` defaults to 1 under TCG (measurably faster and steadier for single-threaded
    Python on small hosts) and 2 with KVM/HVF. ``accel`` is "auto" (hardware first, TCG
    as fallback), "kvm", "hvf" or "tcg". ``share`` is "auto", "9p", "virtiofs" or "copy"
    (project copied onto a read-only disk, no "share" mount). ``init`` replaces the
    guest init (tests use it to simulate broken guests).
    """

    name = "qemu"

    def __init__(
        self,
        project_dir: Path,
        *,
        session_id: Optional[str] = None,
        disk: Optional[vmimage.VmDisk] = None,
        rootfs: Optional[vmimage.RootfsSource] = None,
        rootfs_key: str = "",
        cache_dir: Optional[Path] = None,
        vcpus: Optional[int] = None,
        memory_mb: int = 1024,
        accel: str = "auto",
        boot_timeout: float = 120.0,
        accel_probe_timeout: float = 30.0,
        kernel: Optional[Path] = None,
        init: str = vmimage.GUEST_INIT,
        network: bool = False,
        qemu_binary: Optional[str] = None,
        progress: Optional[Progress] = None,
        docker_client: Any = None,
        die_with_controller: bool = True,
        share: str = "auto",
        work_dir: Optional[Path] = None,
        image: Optional[str] = None,
        vm_image: Optional[str] = None,
        requirements: Sequence[str] = (),
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        # Goes into qemu's -name and socket paths: short, no commas or slashes.
        self.session_id = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id or secrets.token_hex(6))[:32]
        self.vcpus = vcpus
        self.memory_mb = memory_mb
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.accel_probe_timeout = accel_probe_timeout
        self.kernel = Path(kernel) if kernel is not None else None
        self.init = init
        self.network = network
        self.qemu_binary = qemu_binary or "qemu-system-x86_64"
        self.progress: Progress = progress or (lambda _msg: None)
        self._disk = disk
        self._rootfs = rootfs
        self._rootfs_key = rootfs_key
        self._cache_dir = Path(cache_dir) if cache_dir else vmimage.default_cache_dir()
        self._docker_client = docker_client
        self.work_dir = Path(work_dir) if work_dir is not None else None  # console log kept here
        self.user_image = image
        self.vm_image = Path(vm_image) if vm_image else None
        self.requirements = tuple(requirements)
        # PR_SET_PDEATHSIG: qemu and virtiofsd die with the controller (Linux only; a
        # controller that is SIGKILLed elsewhere is cleaned up by the next sweep_stale()).
        self.die_with_controller = die_with_controller
        self._workdir: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._helpers: list = []
        self._transport: Optional[QemuTransport] = None
        self._shares: list = []
        if share not in ("auto", "9p", "virtiofs", "copy"):
            raise ValueError(f"share must be auto, 9p, virtiofs or copy, not {share!r}")
        self._share_request = share
        self._share_mode: Optional[str] = None
        self._info: dict = {"vcpus": vcpus, "memory_mb": memory_mb}

    # ------------------------------------------------------------------ contract

    def check(self) -> None:
        if find_qemu(self.qemu_binary) is None:
            raise EnvironmentFailure(self.name, f"{self.qemu_binary} is not installed",
                                     hint="apt-get install qemu-system-x86 qemu-utils (or run .ci/install-qemu.sh)")
        if shutil.which("qemu-img") is None:
            raise EnvironmentFailure(self.name, "qemu-img is not installed",
                                     hint="apt-get install qemu-utils (or run .ci/install-qemu.sh)")
        if self._disk is None and self.kernel is not None:
            try:
                vmimage.explicit_kernel(self.kernel, None)
            except vmimage.VmImageError as exc:
                raise EnvironmentFailure(self.name, str(exc), hint=exc.hint) from None
        if self._disk is None and self.kernel is None and self._rootfs is None:
            try:
                vmimage.find_host_kernel()
            except vmimage.VmImageError as exc:
                # The image may bring its own kernel; only fail when it cannot.
                self._info.setdefault("warnings", []).append(str(exc))

    def mounts(self) -> Sequence[Mount]:
        mode = self._planned_share_mode()
        mounts = [Mount("guest", GUEST_OWN, "a directory on the VM's own ext4 disk (qcow2 overlay)")]
        if mode in ("9p", "virtiofs"):
            mounts.append(Mount("share", GUEST_SHARE, f"a host directory shared into the VM over {mode}"))
        mounts.append(Mount("tmpfs", GUEST_TMPFS, "a tmpfs inside the VM"))
        return tuple(mounts)

    def agent_start_timeout(self) -> float:
        # start_agent has already booted the VM; this covers the agent's own start
        # (python + pytest import + collection), ~10x slower under TCG.
        return 180.0

    def match_facts(self) -> Mapping[str, Any]:
        # TCG vs KVM is a 10x difference; vCPUs and memory change timings too. The qemu
        # and kernel versions are context only (see describe()).
        return {"qemu": {key: self._info.get(key) for key in ("accelerator", "vcpus", "memory_mb")}}

    def launch_for(self, project_dir: Path, test_files: tuple, pytest_args: tuple) -> AgentLaunch:
        host = AgentLaunch(sys.executable, str(package_parent()), str(project_dir), tuple(test_files),
                           tuple(pytest_args), self.name)
        return self._guest_launch(host, self.prepare())

    def describe(self) -> Mapping[str, Any]:
        return {k: v for k, v in self._info.items() if not k.startswith("_")}

    def start_agent(self, launch: AgentLaunch) -> Transport:
        if self._transport is not None or self._workdir is not None:
            # A restart after a crash or a timeout: throw the old VM away, boot a fresh one.
            self.stop()
        self.check()
        sweep_stale()
        disk = self.prepare()
        self._workdir = self._make_workdir()
        self._info["_started"] = time.monotonic()
        self._shares = self._plan_shares()
        accels = self._accelerators()
        reasons = []
        for index, accel in enumerate(accels):
            last = index == len(accels) - 1
            try:
                sock, pending = self._boot(disk, accel, probe=not last)
            except _AccelFailed as exc:
                reasons.append(f"{accel}: {exc}")
                self.progress(f"qemu: WARNING: {accel.upper()} did not work ({exc}); "
                              f"falling back to {accels[index + 1].upper()}, expect ~10x slower CPU")
                continue
            self._info["accelerator"] = accel
            self._info["fallback_reason"] = "; ".join(reasons) or None
            break
        else:  # pragma: no cover - the last accelerator never raises _AccelFailed
            raise EnvironmentFailure(self.name, "no accelerator worked: " + "; ".join(reasons))
        assert self._workdir is not None
        console = self._workdir / "console.log"
        self._transport = QemuTransport(sock, console, self._close_vm, pending, self._agent_ready)
        guest = self._guest_launch(launch, disk)
        message = {
            "argv": guest.argv(),
            "environ": {**disk.env, **guest.environ()},
            "cwd": guest.project_dir,
            "mounts": self._guest_mounts(),
        }
        if self.network:
            # qemu's user-mode network: fixed addresses, the host is 10.0.2.2.
            message["network"] = {"address": "10.0.2.15", "netmask": "255.255.255.0",
                                  "gateway": "10.0.2.2", "dns": "10.0.2.3"}
        self._transport.send(LAUNCH_PREFIX + json.dumps(message).encode() + b"\n")
        return self._transport

    def _agent_ready(self) -> None:
        started = self._info.get("_started")
        if started is not None:
            self._info["agent_ready_s"] = round(time.monotonic() - started, 2)
            self.progress(f"qemu: agent ready in {self._info['agent_ready_s']:.1f} s "
                          f"(boot {self._info.get('boot_s', 0):.1f} s, {self._info.get('accelerator')})")

    def stop(self) -> None:
        try:
            if self._transport is not None:
                self._transport.close()
            else:
                self._close_vm()
        except Exception:  # noqa: BLE001 - stop() never raises
            pass
        finally:
            self._transport = None
            for helper in self._helpers:
                _kill(helper, 1.0)
            self._helpers = []
            if self._workdir is not None:
                self._keep_console_log(self._workdir)
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def _keep_console_log(self, workdir: Path) -> None:
        if self.work_dir is None:
            return
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / "console.log", self.work_dir / "qemu-console.log")
        except OSError:
            pass

    # ------------------------------------------------------------------ disk

    def prepare(self) -> vmimage.VmDisk:
        """The VM disk, built (or found in the cache) on first use."""
        if self._disk is not None:
            return self._disk
        try:
            if self.vm_image is not None:
                self._disk = _disk_from_path(self.vm_image, self._cache_dir, self.progress, self.kernel)
            elif self._rootfs is not None:
                self._disk = vmimage.build_vm_disk(self._rootfs, self._cache_dir, self._rootfs_key,
                                                   self.progress, kernel=self.kernel)
            else:
                self._disk = self._disk_from_docker_image()
        except vmimage.VmImageError as exc:
            raise EnvironmentFailure(self.name, str(exc), hint=exc.hint, log_tail=exc.log_tail) from None
        return self._disk

    def _disk_from_docker_image(self) -> vmimage.VmDisk:
        try:
            from pytest_hostperf import images
            from pytest_hostperf.environments.docker import connect
        except ImportError as exc:
            raise EnvironmentFailure(self.name, f"cannot build the VM disk: {exc}",
                                     hint="pip install docker, or pass a prebuilt VM disk (--hostperf-vm-image)") from None
        try:
            client = self._docker_client or connect()
            ref = images.ensure_image(client, self.project_dir, self.user_image, self.requirements, self.progress)
        except Exception as exc:  # noqa: BLE001 - EnvironmentFailure, ImageBuildError, docker errors
            raise EnvironmentFailure(
                self.name, f"the VM disk is made from the docker image, which is not available: {exc}",
                hint="run `hostperf image build --vm` (needs a Docker engine: .ci/install-docker.sh), "
                     "or pass a VM disk or root filesystem with --hostperf-vm-image") from None
        return prepare_vm_disk(ref, client=client, cache_dir=self._cache_dir, progress=self.progress,
                               kernel=self.kernel, session_id=self.session_id)

    # ------------------------------------------------------------------ boot

    def _make_workdir(self) -> Path:
        root = session_root()
        root.mkdir(parents=True, exist_ok=True)
        # Short and safe: unix socket paths inside it must stay under 108 bytes.
        workdir = root / self.session_id
        workdir.mkdir()
        owner = {"session_pid": os.getpid(), "session_id": self.session_id,
                 "pid_started": _process_start(os.getpid()), "created": time.time()}
        (workdir / "owner.json").write_text(json.dumps(owner))
        return workdir

    def _vcpus_for(self, accel: str) -> int:
        if self.vcpus is not None:
            return self.vcpus
        # Measured on a 2-core host: under TCG one vCPU runs single-threaded Python ~13x
        # slower than native, two vCPUs (multi-threaded TCG) ~17-21x, and boot no faster.
        return 1 if accel == "tcg" else 2

    def _accelerators(self) -> list:
        if self.accel != "auto":
            return [self.accel]
        if sys.platform == "darwin":
            return ["hvf", "tcg"]
        if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
            return ["kvm", "tcg"]
        if os.path.exists("/dev/kvm"):
            self._info["kvm_unusable"] = "/dev/kvm is not readable and writable by this user"
        return ["tcg"]

    def _planned_share_mode(self) -> str:
        if self._share_mode is not None:
            return self._share_mode
        disk = self.prepare()
        if self._share_request != "auto":
            mode = self._share_request
            if mode != "copy" and disk.share_fs != mode:
                raise EnvironmentFailure(self.name, f"the guest kernel {disk.kernel_version} cannot mount {mode}",
                                         hint="use share='auto' or 'copy'")
        elif disk.share_fs == "9p":
            mode = "9p"
        elif disk.share_fs == "virtiofs" and self._virtiofsd() is not None and os.geteuid() == 0:
            mode = "virtiofs"
        else:
            # virtiofsd (C, qemu 7.2) needs root; without a share the project is copied
            # onto a read-only disk and the "share" mount is not offered.
            mode = "copy"
        self._share_mode = mode
        self._info["share_fs"] = mode
        return mode

    @staticmethod
    def _virtiofsd() -> Optional[str]:
        for path in VIRTIOFSD_PATHS:
            if os.access(path, os.X_OK):
                return path
        return shutil.which("virtiofsd")

    def _plan_shares(self) -> list:
        shares = [_Share("project", self.project_dir, GUEST_PROJECT, True)]
        if self._package_in_project() is None:
            # Share only the package, never the rest of a site-packages directory.
            shares.append(_Share("pkg", package_parent() / "pytest_hostperf", GUEST_PKG + "/pytest_hostperf", True))
        if self._planned_share_mode() != "copy":
            assert self._workdir is not None
            share = self._workdir / "share"
            share.mkdir()
            shares.append(_Share("share", share, GUEST_SHARE, False))
        return shares

    def _package_in_project(self) -> Optional[Path]:
        """Where the pytest_hostperf package's parent is inside the project, if it is."""
        try:
            return (package_parent() / "pytest_hostperf").relative_to(self.project_dir).parent
        except ValueError:
            return None

    def _guest_mounts(self) -> list:
        mode = self._planned_share_mode()
        mounts = [{"source": "tmpfs", "target": GUEST_TMPFS, "fstype": "tmpfs", "options": "mode=1777"}]
        if mode == "copy":
            # The copy disk is the first virtio-blk disk, or the second when the root is one.
            device = "/dev/vdb" if self.prepare().root_device == "virtio" else "/dev/vda"
            mounts.insert(0, {"source": device, "target": GUEST_EXTRA, "fstype": "ext4", "options": "ro"})
            return mounts
        for share in self._shares:
            options = "ro" if share.readonly else ""
            if mode == "9p":
                options = ",".join(filter(None, [options, "trans=virtio,version=9p2000.L,msize=524288"]))
            mounts.insert(len(mounts) - 1, {"source": share.tag, "target": share.guest_path,
                                            "fstype": mode, "options": options})
        return mounts

    def _guest_launch(self, launch: AgentLaunch, disk: vmimage.VmDisk) -> AgentLaunch:
        host_project = str(self.project_dir)
        guest_project = GUEST_PROJECT
        if self._planned_share_mode() == "copy":
            guest_project = GUEST_EXTRA + "/project"
        inside = self._package_in_project()
        if inside is not None:
            pythonpath = str(Path(guest_project) / inside)
        else:
            pythonpath = GUEST_EXTRA + "/pkg" if self._planned_share_mode() == "copy" else GUEST_PKG

        def remap(arg: str) -> str:
            option, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
            for prefix in (host_project, str(Path(launch.project_dir).resolve())):
                if value == prefix or value.startswith(prefix + os.sep):
                    return option + eq + guest_project + value[len(prefix):]
            return arg

        return dataclasses.replace(
            launch,
            python=disk.python,
            pythonpath=pythonpath,
            project_dir=guest_project,
            test_files=tuple(remap(a) for a in launch.test_files),
            pytest_args=tuple(remap(a) for a in launch.pytest_args),
            env=launch.env or self.name,
        )

    def _qemu_argv(self, disk: vmimage.VmDisk, accel: str, workdir: Path) -> list:
        append = ["console=ttyS0", "rw", "rootfstype=ext4", f"init={self.init}", "panic=-1", "quiet",
                  "loglevel=3", "random.trust_cpu=on", "tsc=reliable", "mitigations=off"]
        argv = [find_qemu(self.qemu_binary) or self.qemu_binary,
                "-name", f"hostperf-{self.session_id},process=hostperf-{self.session_id}",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-m", str(self.memory_mb), "-smp", str(self._vcpus_for(accel)),
                "-pidfile", str(workdir / "qemu.pid"),
                "-kernel", str(disk.kernel),
                "-serial", f"file:{workdir / 'console.log'}",
                "-device", "virtio-rng-pci",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,path={workdir / 'agent.sock'},server=on,wait=off,id=agent",
                "-device", f"virtserialport,chardev=agent,name={vmimage.AGENT_PORT_NAME}",
                "-drive", f"file={workdir / 'overlay.qcow2'},if=none,id=root,format=qcow2,cache=unsafe"]
        if accel == "kvm":
            argv += ["-accel", "kvm", "-cpu", "host"]
        elif accel == "hvf":
            argv += ["-accel", "hvf", "-cpu", "host"]
        else:
            argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
        if disk.root_device == "nvme":
            argv += ["-device", "nvme,drive=root,serial=hostperf-root"]
            append.insert(0, "root=/dev/nvme0n1")
        else:
            argv += ["-device", "virtio-blk-pci,drive=root"]
            append.insert(0, "root=/dev/vda")
            if disk.initrd is not None:
                argv += ["-initrd", str(disk.initrd)]
        if not self.network:
            argv += ["-nic", "none"]
        else:
            argv += ["-nic", "user,model=virtio-net-pci"]
        mode = self._planned_share_mode()
        if mode == "9p":
            for share in self._shares:
                argv += ["-virtfs", f"local,path={share.host_path},mount_tag={share.tag},security_model=none"
                         + (",readonly=on" if share.readonly else "")]
        elif mode == "virtiofs":
            argv += ["-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                     "-machine", "memory-backend=mem"]   # vhost-user needs shared guest RAM
            for index, share in enumerate(self._shares):
                argv += ["-chardev", f"socket,id=fs{index},path={workdir / f'fs-{share.tag}.sock'}",
                         "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={share.tag}"]
        else:
            argv += ["-drive", f"file={workdir / 'extra.img'},if=none,id=extra,format=raw,readonly=on",
                     "-device", "virtio-blk-pci,drive=extra"]
        argv += ["-append", " ".join(append)]
        return argv

    def _start_helpers(self, workdir: Path) -> None:
        mode = self._planned_share_mode()
        if mode == "virtiofs":
            virtiofsd = self._virtiofsd()
            assert virtiofsd is not None
            for share in self._shares:
                sock = workdir / f"fs-{share.tag}.sock"
                if sock.exists():
                    sock.unlink()
                argv = [virtiofsd, f"--socket-path={sock}", "-o", f"source={share.host_path}",
                        "-o", "cache=auto", "-o", "no_posix_lock", "-o", "log_level=warn"]
                if share.readonly and os.geteuid() == 0 and shutil.which("unshare"):
                    # Enforce read-only on the host side too: a private read-only bind of
                    # the source in a mount namespace of virtiofsd's own.
                    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
                    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                            str(share.host_path), *argv]
                self._helpers.append(_spawn(argv, workdir / f"virtiofsd-{share.tag}.log", self.die_with_controller))
            deadline = time.monotonic() + 10
            for share in self._shares:
                sock = workdir / f"fs-{share.tag}.sock"
                while not sock.exists():
                    failed = [h for h in self._helpers if h.poll() is not None]
                    if failed or time.monotonic() > deadline:
                        raise EnvironmentFailure(
                            self.name, f"virtiofsd for {share.host_path} did not start",
                            hint="run as root, or use a guest kernel with 9p",
                            log_tail=_tail(workdir / f"virtiofsd-{share.tag}.log"))
                    time.sleep(0.02)
            self._record_children()
        elif mode == "copy" and not (workdir / "extra.img").exists():
            self._build_copy_disk(workdir)

    def _build_copy_disk(self, workdir: Path) -> None:
        staging = workdir / "extra"
        ignore = shutil.ignore_patterns(".git", "__pycache__", ".venv", "venv", ".tox", "node_modules",
                                        ".pytest_cache", ".benchmarks")
        self.progress("qemu: guest kernel has no 9p/virtiofs; copying the project into a read-only disk")
        shutil.copytree(self.project_dir, staging / "project", symlinks=True, ignore=ignore)
        shutil.copytree(package_parent() / "pytest_hostperf", staging / "pkg" / "pytest_hostperf", ignore=ignore)
        size = max(64, int(vmimage._du_mb(staging) * 1.5) + 32)
        proc = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(staging), "-F", str(workdir / "extra.img"),
                               f"{size}M"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        shutil.rmtree(staging, ignore_errors=True)
        if proc.returncode != 0:
            raise EnvironmentFailure(self.name, "could not write the project copy disk",
                                     log_tail=proc.stdout.decode(errors="replace"))

    def _record_children(self) -> None:
        if self._workdir is None:
            return
        owner_file = self._workdir / "owner.json"
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            owner = {}
        owner["helpers"] = [h.pid for h in self._helpers]
        owner_file.write_text(json.dumps(owner))

    def _boot(self, disk: vmimage.VmDisk, accel: str, probe: bool) -> tuple:
        """Start qemu and wait for the guest bootstrap's hello; return (socket, pending bytes)."""
        workdir = self._workdir
        assert workdir is not None
        for leftover in ("overlay.qcow2", "console.log", "qemu.log", "agent.sock", "qemu.pid"):
            try:
                (workdir / leftover).unlink()
            except FileNotFoundError:
                pass
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.path), "-F", "raw",
                               str(workdir / "overlay.qcow2")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise EnvironmentFailure(self.name, f"qemu-img could not create the overlay on {disk.path}",
                                     log_tail=proc.stdout.decode(errors="replace"))
        for helper in self._helpers:
            _kill(helper, 1.0)
        self._helpers = []
        self._start_helpers(workdir)
        argv = self._qemu_argv(disk, accel, workdir)
        (workdir / "qemu.argv").write_text(json.dumps(argv))
        self._info["vcpus"] = self._vcpus_for(accel)
        self.progress(f"qemu: booting ({accel}, {self._vcpus_for(accel)} vCPU, {self.memory_mb} MiB, "
                      f"kernel {disk.kernel_version or disk.kernel.name}) ...")
        version = self._qemu_version()
        started = time.monotonic()
        self._proc = _spawn(argv, workdir / "qemu.log", self.die_with_controller)
        self._info.update({"qemu": version, "kernel": disk.kernel_version,
                           "disk": str(disk.path), "disk_key": disk.key, "root_device": disk.root_device,
                           "pid": self._proc.pid, "name": f"hostperf-{self.session_id}"})
        timeout = min(self.accel_probe_timeout, self.boot_timeout) if probe else self.boot_timeout
        try:
            sock, pending = self._await_boot(workdir, started, timeout, accel, probe)
        except BaseException:
            self._close_vm()
            raise
        boot_s = time.monotonic() - started
        self._info["boot_s"] = round(boot_s, 2)
        self.progress(f"qemu: guest up in {boot_s:.1f} s ({accel}); starting the agent")
        return sock, pending

    def _await_boot(self, workdir: Path, started: float, timeout: float, accel: str, probe: bool) -> tuple:
        assert self._proc is not None
        sock_path = workdir / "agent.sock"
        console = workdir / "console.log"
        deadline = started + timeout
        sock: Optional[socket.socket] = None
        buffer = b""
        while True:
            code = self._proc.poll()
            problem = self._boot_problem(workdir)
            if code is not None or problem:
                reason = problem or f"qemu exited with status {code}"
                detail = _first_error(_tail(workdir / "qemu.log", 10)) if code is not None else ""
                if detail and detail not in reason:
                    reason += f": {detail}"
                if probe:
                    raise _AccelFailed(reason)
                raise EnvironmentFailure(
                    self.name, f"the VM did not boot ({accel}): {reason}",
                    hint=_boot_hint(reason),
                    log_tail=(_tail(workdir / "qemu.log", 10) + "\n" + _tail(console)).strip())
            if time.monotonic() > deadline:
                reason = f"the guest did not reach the agent port within {timeout:.0f} s"
                if probe:
                    raise _AccelFailed(reason)
                raise EnvironmentFailure(
                    self.name, f"{reason} ({accel})",
                    hint="look at the console output below; a slow host may need a longer boot_timeout",
                    log_tail=_tail(console))
            if sock is None and sock_path.exists():
                candidate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    candidate.connect(str(sock_path))
                    sock = candidate
                except OSError:
                    candidate.close()
            if sock is None:
                time.sleep(0.02)
                continue
            ready, _, _ = select.select([sock], [], [], 0.1)
            if ready:
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
                marker = buffer.find(vmimage.BOOT_MARKER)
                if marker >= 0 and b"\n" in buffer[marker:]:
                    end = buffer.index(b"\n", marker) + 1
                    try:
                        hello = json.loads(buffer[marker + len(vmimage.BOOT_MARKER):end])
                        self._info["guest_uptime_at_boot_s"] = hello.get("uptime")
                    except ValueError:
                        pass
                    return sock, buffer[end:]

    def _boot_problem(self, workdir: Path) -> str:
        for path in (workdir / "qemu.log", workdir / "console.log"):
            text = _tail(path, 60)
            if "KVM internal error" in text:
                return "KVM internal error (nested virtualization does not work here)"
            match = re.search(r"Kernel panic - not syncing:[^\n]*", text)
            if match:
                return match.group(0).strip()
        return ""

    def _qemu_version(self) -> str:
        if "qemu" in self._info:
            return self._info["qemu"]
        try:
            out = subprocess.run([find_qemu(self.qemu_binary) or self.qemu_binary, "--version"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10).stdout.decode()
            match = re.search(r"version (\S+)", out)
            return match.group(1) if match else out.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    def _close_vm(self) -> None:
        """End qemu: give a guest that is powering off a moment, then terminate/kill it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            _kill(proc, 3.0)
        for helper in self._helpers:
            _kill(helper, 1.0)


def prepare_vm_disk(ref: Any, client: Any = None, cache_dir: Optional[Path] = None,
                    progress: Optional[Progress] = None, kernel: Optional[Path] = None,
                    session_id: str = "") -> vmimage.VmDisk:
    """The cached VM disk for a docker image (``images.ImageRef``), exported and built once.

    The image is exported through a created (never started) container labelled with
    the session, which is removed again; the disk is keyed by the image id.
    """
    say = progress or (lambda _msg: None)
    cache_dir = Path(cache_dir) if cache_dir else vmimage.default_cache_dir()
    chosen = vmimage.explicit_kernel(kernel, None) if kernel else None
    cached = vmimage.load_cached(cache_dir, ref.id, chosen)
    if cached is not None:
        return cached
    if client is None:
        from pytest_hostperf.environments.docker import connect

        client = connect()
    image = client.images.get(ref.tag)
    image_env = dict(item.split("=", 1) for item in (image.attrs.get("Config", {}).get("Env") or []) if "=" in item)
    container = client.containers.create(ref.tag, command=["true"],
                                         labels={sweep_label(): f"{os.getpid()}:{session_id or 'image-build'}"})
    try:
        return vmimage.build_vm_disk(container.export(), cache_dir, ref.id, say, kernel=kernel,
                                     python=ref.python, env=image_env, label=ref.tag)
    finally:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - best effort; the docker sweep removes labelled leftovers
            pass


def _disk_from_path(path: Path, cache_dir: Path, progress: Progress, kernel: Optional[Path]) -> vmimage.VmDisk:
    """--hostperf-vm-image: a built disk directory, its disk.img, or a root filesystem dir."""
    path = Path(path).expanduser().resolve()
    for directory in (path, path.parent):
        manifest = directory / "disk.json"
        if manifest.is_file():
            try:
                return vmimage.VmDisk.from_json(directory, json.loads(manifest.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                raise vmimage.VmImageError(f"unreadable VM disk manifest {manifest}: {exc}") from None
    if path.is_dir() and (path / "usr").is_dir():
        return vmimage.build_vm_disk(path, cache_dir, "dir:" + str(path), progress, kernel=kernel)
    raise vmimage.VmImageError(
        f"{path} is neither a VM disk made by hostperf (a directory with disk.json) nor a root filesystem",
        hint="use the directory printed by `hostperf image build --vm`, or a root filesystem directory")


class _AccelFailed(Exception):
    """An accelerator could not run the VM; the caller tries the next one."""


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() or "failed" in line.lower() or "assertion" in line.lower():
            return line.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _boot_hint(reason: str) -> str:
    if "panic" in reason.lower():
        return "the guest kernel panicked: check the kernel, the root disk and init= in the console output"
    if "kernel" in reason.lower() or "initrd" in reason.lower():
        return "qemu could not load the kernel: check the vmlinuz given to the qemu environment (or the VM disk's)"
    return "look at the qemu and console output below"


def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil
        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        return None


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    pid = owner.get("session_pid")
    if not isinstance(pid, int) or not session_alive(pid):
        return False
    started = owner.get("pid_started")
    if started is None:
        return True
    now = _process_start(pid)
    return now is None or abs(now - started) < 1.0   # a different process reusing the pid


def sweep_stale(root: Optional[Path] = None) -> list:
    """Kill qemu/virtiofsd left by dead sessions and remove their temp dirs; return them.

    A session dir belongs to a dead session when its owner.json names a controller pid
    that no longer runs (or now belongs to another process). Processes are matched by
    their ``-name hostperf-<session>`` argument as well as the pidfile, so a reused pid is
    never killed.
    """
    root = root or session_root()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        entries = []
    for workdir in entries:
        if not workdir.is_dir():
            continue
        try:
            owner = json.loads((workdir / "owner.json").read_text())
        except (OSError, ValueError):
            # No owner file: a dir still being created, or garbage; leave young ones alone.
            try:
                if time.time() - workdir.stat().st_mtime < 60:
                    continue
            except OSError:
                continue
            owner = {}
        if owner and _owner_alive(owner):
            continue
        session = owner.get("session_id") or workdir.name
        _kill_session_processes(session, workdir, owner.get("helpers", []))
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def _kill_session_processes(session: str, workdir: Path, helpers: Sequence[int]) -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        psutil = None
    pids = set()
    try:
        pids.add(int((workdir / "qemu.pid").read_text().strip()))
    except (OSError, ValueError):
        pass
    pids.update(p for p in helpers if isinstance(p, int))
    if psutil is None:
        return
    victims = []
    marker = f"hostperf-{session}"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except (psutil.Error, KeyError):
            continue
        text = " ".join(cmdline)
        if (proc.info["pid"] in pids or any(marker in a for a in cmdline)) and (
                marker in text or str(workdir) in text):
            victims.append(proc)
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=5)
