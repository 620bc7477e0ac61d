"""The qemu command line, built from plain data and nothing else (no files, no processes).

:class:`QemuCommand` says what the VM is; :meth:`QemuCommand.argv` renders it. Share
devices (:class:`Virtfs`, :class:`VhostUserFs`, :class:`ExtraDisk`) come from
:mod:`.shares`. Every value that qemu parses as a comma-separated option list goes
through :func:`escape` (qemu reads ``,,`` as a literal comma), so a project or temp dir
with a comma in its name cannot inject options.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Final, Optional, Sequence, Union

from pytest_hostperf.agent.protocol import AGENT_PORT_NAME

#: The kernel command line every guest boots with (``root=`` and ``init=`` are added).
KERNEL_ARGS: Final = ("console=ttyS0", "rw", "rootfstype=ext4", "panic=-1", "quiet", "loglevel=3",
                      "random.trust_cpu=on", "tsc=reliable", "mitigations=off")
#: Added while probing a hardware accelerator: the kernel's real-mode setup code prints
#: to the serial port at once, so a guest that runs shows output within moments.
EARLY_CONSOLE_ARGS: Final = ("earlyprintk=serial,ttyS0",)


def escape(value: object) -> str:
    """A value inside a qemu option list (``key=value,key=value``): commas doubled."""
    return str(value).replace(",", ",,")


@dataclasses.dataclass(frozen=True)
class Virtfs:
    """A host directory over 9p (``-virtfs``)."""

    tag: str
    host_path: Path
    readonly: bool
    security_model: str = "none"   # "mapped-xattr"/"mapped-file" keep guest ownership off the host


@dataclasses.dataclass(frozen=True)
class VhostUserFs:
    """A host directory over virtiofs: a virtiofsd listening on ``socket``."""

    tag: str
    socket: Path


@dataclasses.dataclass(frozen=True)
class ExtraDisk:
    """A disk after the root disk, as virtio-blk (/dev/vdb, ...).

    Read-only raw by default (the project copy when nothing can be shared); docker@qemu's
    ``/var/lib/docker`` is a writable qcow2 overlay (``cache="unsafe"``: thrown away with
    the session) or, while its cached image is being filled, the raw image itself with
    ``cache="writeback"`` (the guest's flushes must reach it).
    """

    path: Path
    fmt: str = "raw"
    readonly: bool = True
    cache: Optional[str] = None


ShareDevice = Union[Virtfs, VhostUserFs, ExtraDisk]


@dataclasses.dataclass(frozen=True)
class QemuCommand:
    """Everything that decides the qemu command line of one VM."""

    binary: str
    name: str                     # process and guest name, e.g. hostperf-<session>
    accel: str                    # "kvm", "hvf" or "tcg"
    vcpus: int
    memory_mb: int
    kernel: Path
    initrd: Optional[Path]        # only used with a virtio-blk root (driver in the initrd)
    root_device: str              # "nvme" (built-in driver) or "virtio"
    overlay: Path                 # the qcow2 overlay over the cached disk
    console_log: Path             # the guest's serial console, a file
    pidfile: Path
    agent_socket: Path            # host end of the agent's virtio-serial port
    init: str                     # the guest's PID 1
    network: bool = False         # user networking with a way out (--hostperf-network)
    #: ``hostfwd=``/``guestfwd=`` rules; without ``network`` the nic is ``restrict=on``,
    #: so these forwards are the guest's only ways in and out.
    nic_rules: Sequence[str] = ()
    devices: Sequence[ShareDevice] = ()
    early_console: bool = False

    def kernel_args(self) -> str:
        root = "root=/dev/nvme0n1" if self.root_device == "nvme" else "root=/dev/vda"
        words = [root, *KERNEL_ARGS, f"init={self.init}"]
        if self.early_console:
            words += EARLY_CONSOLE_ARGS
        return " ".join(words)

    def argv(self) -> list[str]:
        argv = [self.binary,
                "-name", f"{escape(self.name)},process={escape(self.name)}",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-m", str(self.memory_mb), "-smp", str(self.vcpus),
                "-pidfile", str(self.pidfile),
                "-kernel", str(self.kernel),
                "-chardev", f"file,id=console,path={escape(self.console_log)}",
                "-serial", "chardev:console",
                "-device", "virtio-rng-pci",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=agent,path={escape(self.agent_socket)},server=on,wait=off",
                "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
                "-drive", f"file={escape(self.overlay)},if=none,id=root,format=qcow2,cache=unsafe"]
        argv += self._accel_args()
        if self.root_device == "nvme":
            argv += ["-device", "nvme,drive=root,serial=hostperf-root"]
        else:
            argv += ["-device", "virtio-blk-pci,drive=root"]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
        argv += ["-nic", self.nic()]
        argv += self._device_args()
        argv += ["-append", self.kernel_args()]
        return argv

    def nic(self) -> str:
        """The ``-nic`` value: none, restricted user networking with forwards, or open user networking."""
        if not self.network and not self.nic_rules:
            return "none"
        return ",".join(["user,model=virtio-net-pci", *([] if self.network else ["restrict=on"]), *self.nic_rules])

    def _accel_args(self) -> list[str]:
        if self.accel in ("kvm", "hvf"):
            return ["-accel", self.accel, "-cpu", "host"]
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]

    def _device_args(self) -> list[str]:
        args: list[str] = []
        if any(isinstance(device, VhostUserFs) for device in self.devices):
            # vhost-user needs the guest's RAM shared with virtiofsd.
            args += ["-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                     "-machine", "memory-backend=mem"]
        for index, device in enumerate(self.devices):
            if isinstance(device, Virtfs):
                options = [f"local,path={escape(device.host_path)}", f"mount_tag={escape(device.tag)}",
                           f"security_model={device.security_model}"]
                if device.readonly:
                    options.append("readonly=on")
                args += ["-virtfs", ",".join(options)]
            elif isinstance(device, VhostUserFs):
                args += ["-chardev", f"socket,id=fs{index},path={escape(device.socket)}",
                         "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={escape(device.tag)}"]
            else:
                drive = f"file={escape(device.path)},if=none,id=extra{index},format={device.fmt}"
                drive += ",readonly=on" if device.readonly else ""
                drive += f",cache={device.cache}" if device.cache else ""
                args += ["-drive", drive, "-device", f"virtio-blk-pci,drive=extra{index}"]
        return args
