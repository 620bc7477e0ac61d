"""One VM from its command line to a connected agent port: the booter every hostperf VM uses.

The qemu environment's agent VM and docker@qemu's engine VM are the same machine with
different passengers: both boot a cached disk through a throwaway qcow2 overlay into the
guest bootstrap (:mod:`pytest_hostperf.agent.boot`), wait for its hello on the
virtio-serial port and send it a launch message (mounts, network, the command to run).
:class:`Machine` does that once, with the accelerator fallback of :mod:`.boot`; what runs
in the VM and what is shared into it is the caller's (:class:`BootSpec`).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.environments.process import stop_process
from pytest_hostperf.environments.qemu import boot, kvm_memo
from pytest_hostperf.environments.qemu import workdir as workdirs
from pytest_hostperf.environments.qemu.cmdline import ExtraDisk, QemuCommand, ShareDevice
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm.model import GUEST_INIT, VmDisk

#: Starts the host helpers of one boot attempt (virtiofsd serves one connection, so each
#: attempt gets fresh ones); they are stopped with the VM.
HelperStarter = Callable[[], Sequence["subprocess.Popen[bytes]"]]


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """What one VM is: its disk and kernel, its size, its devices, how it may reach out."""

    disk: VmDisk                      # cached, never written: booted through an overlay
    kernel: Path
    initrd: Optional[Path]
    root_device: str                  # "nvme" (built-in driver) or "virtio" (driver in the initrd)
    kernel_version: str = ""
    vcpus: Optional[int] = None       # None: 1 under TCG, 2 with KVM/HVF
    memory_mb: int = 1024
    accel: str = "auto"               # "auto" (hardware first, TCG as fallback), "kvm", "hvf", "tcg"
    init: str = GUEST_INIT
    network: bool = False
    nic_rules: tuple[str, ...] = ()
    devices: tuple[ShareDevice, ...] = ()
    qemu_binary: str = "qemu-system-x86_64"
    boot_timeout: float = 120.0
    accel_probe_timeout: float = 30.0
    first_output_timeout: float = 5.0

    @classmethod
    def for_disk(cls, disk: VmDisk, **options: Any) -> BootSpec:
        """The disk booted with its own kernel."""
        return cls(disk=disk, kernel=disk.kernel, initrd=disk.initrd, root_device=disk.root_device,
                   kernel_version=disk.kernel_version, **options)


class Machine:
    """A VM in ``workdir`` (made by :func:`.workdir.make_workdir`, removed by the caller).

    ``start_helpers`` runs before each boot attempt. ``info`` collects what the
    controller reports: accelerator, fallback reason, vCPUs, boot time, qemu version.
    """

    def __init__(self, spec: BootSpec, session_id: str, workdir: Path, *, name: str = "",
                 reporter: Reporter = SILENT, die_with_parent: bool = True,
                 start_helpers: Optional[HelperStarter] = None) -> None:
        self.spec = spec
        self.session_id = session_id
        self.workdir = workdir
        self.name = name or f"hostperf-{session_id}"
        self.reporter = reporter
        self.die_with_parent = die_with_parent
        self._start_helpers = start_helpers
        self._helpers: list[subprocess.Popen[bytes]] = []
        self._boot: Optional[boot.Boot] = None
        self.info: dict[str, Any] = {}

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def running(self) -> bool:
        return self._boot is not None and self._boot.proc is not None and self._boot.proc.poll() is None

    def boot(self) -> tuple[socket.socket, bytes]:
        """Boot until the guest bootstrap says hello; the agent port and what followed the hello."""
        accels, kvm_unusable = boot.accelerators(self.spec.accel, sys.platform)
        if kvm_unusable:
            self.info["kvm_unusable"] = kvm_unusable
        reasons: list[str] = []
        binary = boot.find_qemu(self.spec.qemu_binary) or self.spec.qemu_binary
        probing_kvm = accels[:-1].count("kvm") == 1   # tried first, with a fallback
        known = kvm_memo.recall(binary) if probing_kvm else None
        if known is not None and not known.works:
            accels = [a for a in accels if a != "kvm"]
            reasons.append(f"kvm: {known.reason} (learned at {known.at} since this machine booted; not tried again)")
            self.reporter.warn(f"KVM did not work earlier since this machine booted ({known.reason}); falling back "
                               f"to {accels[0].upper()} without trying again, expect ~10x slower CPU")
            probing_kvm = False
        for index, accel in enumerate(accels):
            probe = index < len(accels) - 1
            try:
                result = self._boot_once(accel, probe)
            except boot.AccelFailed as exc:
                reasons.append(f"{accel}: {exc}")
                self.reporter.warn(f"{accel.upper()} did not work ({exc}); falling back to "
                                   f"{accels[index + 1].upper()}, expect ~10x slower CPU")
                continue
            self.info["accelerator"] = accel
            self.info["fallback_reason"] = "; ".join(reasons) or None
            if probing_kvm:
                kvm_reason = next((r.split(": ", 1)[1] for r in reasons if r.startswith("kvm: ")), "")
                kvm_memo.remember(binary, kvm_memo.KvmOutcome(accel == "kvm", kvm_reason))
            return result
        raise EnvironmentFailure(boot.ENV_NAME, "no accelerator worked: " + "; ".join(reasons))  # pragma: no cover

    def launch(self, sock: socket.socket, message: Mapping[str, Any]) -> None:
        """Send the bootstrap its launch message: mounts, network, argv, environ, cwd."""
        sock.sendall(protocol.LAUNCH_PREFIX + json.dumps(dict(message)).encode() + b"\n")

    def close(self, patience: float = 2.0) -> None:
        """Kill qemu (after ``patience`` s for a guest that powers off) and the helpers. Idempotent."""
        running, self._boot = self._boot, None
        if running is not None:
            running.kill(patience)
        self._stop_helpers()

    def wait_exit(self, timeout: float) -> Optional[int]:
        """Wait for qemu to end by itself (the guest powered off); its status, or None."""
        if self._boot is None or self._boot.proc is None:
            return None
        try:
            return self._boot.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # ------------------------------------------------------------------ one attempt

    def _boot_once(self, accel: str, probe: bool) -> tuple[socket.socket, bytes]:
        spec = self.spec
        boot.create_overlay(spec.disk, self.workdir / "overlay.qcow2")
        self._stop_helpers()
        self._helpers = list(self._start_helpers()) if self._start_helpers else []
        workdirs.record_helpers(self.workdir, self.session_id, [h.pid for h in self._helpers])
        vcpus = self.vcpus_for(accel)
        command = QemuCommand(
            binary=boot.find_qemu(spec.qemu_binary) or spec.qemu_binary, name=self.name, accel=accel, vcpus=vcpus,
            memory_mb=spec.memory_mb, kernel=spec.kernel, initrd=spec.initrd, root_device=spec.root_device,
            overlay=self.workdir / "overlay.qcow2", console_log=self.console_log, pidfile=self.workdir / "qemu.pid",
            agent_socket=self.workdir / "agent.sock", init=spec.init, network=spec.network,
            nic_rules=spec.nic_rules, devices=spec.devices, early_console=probe)
        self.info["vcpus"] = vcpus
        self.reporter.step(f"booting ({accel}, {vcpus} vCPU, {spec.memory_mb} MiB, "
                           f"kernel {spec.kernel_version or spec.kernel.name}) ...")
        if "qemu" not in self.info:
            self.info["qemu"] = boot.qemu_version(command.binary)
        self._boot = boot.Boot(command, self.workdir, self.die_with_parent)
        assert self._boot.proc is not None
        self.info.update({"kernel": spec.kernel_version, "disk": str(spec.disk.path), "disk_key": spec.disk.key,
                          "root_device": spec.root_device, "pid": self._boot.proc.pid, "name": command.name})
        timeout = min(spec.accel_probe_timeout, spec.boot_timeout) if probe else spec.boot_timeout
        sock, pending = self._boot.wait(timeout, probe, spec.first_output_timeout)
        boot_s = time.monotonic() - self._boot.started
        self.info["boot_s"] = round(boot_s, 2)
        self.info["guest_uptime_at_boot_s"] = self._boot.hello.get("uptime")
        self.reporter.step(f"guest up in {boot_s:.1f} s ({accel})")
        return sock, pending

    def vcpus_for(self, accel: str) -> int:
        if self.spec.vcpus is not None:
            return self.spec.vcpus
        # Measured on a 2-core host: under TCG one vCPU runs single-threaded Python ~13x
        # slower than native, two vCPUs (multi-threaded TCG) ~17-21x, and boot no faster.
        return 1 if accel == "tcg" else 2

    def _stop_helpers(self) -> None:
        for helper in self._helpers:
            stop_process(helper, grace=1.0)
        self._helpers = []


def data_drive(path: Path, fmt: str = "qcow2", keep: bool = False) -> ExtraDisk:
    """A writable disk after the root disk: thrown away with the session, or ``keep`` (flushed)."""
    return ExtraDisk(path, fmt=fmt, readonly=False, cache="writeback" if keep else "unsafe")
