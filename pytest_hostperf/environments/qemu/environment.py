"""The ``qemu`` environment: the agent inside a QEMU virtual machine.

The VM boots the cached disk (:mod:`pytest_hostperf.vm`) through a throwaway qcow2
overlay, straight into a tiny init (no systemd, no initrd when the kernel can mount the
root disk by itself), and the guest bootstrap (:mod:`pytest_hostperf.agent.boot`) runs
the agent with stdin/stdout on a virtio-serial port whose host end is a unix socket.
The project and the package reach the guest read-only as :mod:`.shares` decides (9p,
virtiofs, or a copy on a second disk); the writable ``share-9p`` and ``share-nfs`` mounts
come from :mod:`.host_shares`. :mod:`.machine` boots it (with :mod:`.boot`'s accelerator
fallback and :mod:`.cmdline`'s command line); :mod:`.workdir` keeps the VM's files
private and sweeps what killed sessions left.

The disk's own kernel (Debian's cloud kernel) has no 9p: a session that uses
``share-9p`` boots the same disk with Debian's generic kernel and hostperf's initramfs
(:mod:`pytest_hostperf.vm.guest_kernel`), which boots ~2.5x slower under TCG, so only then.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from pytest_hostperf import vm
from pytest_hostperf.environments.base import AgentLaunch, Environment, EnvironmentFailure, Mount, package_parent
from pytest_hostperf.environments.qemu import boot, shares
from pytest_hostperf.environments.qemu import workdir as workdirs
from pytest_hostperf.environments.qemu.disks import disk_from_path, prepare_vm_disk
from pytest_hostperf.environments.qemu.host_shares import USER_NETWORK, HostShare, HostShares, unavailable_reason
from pytest_hostperf.environments.qemu.machine import BootSpec, Machine
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm.model import GUEST_OWN, GUEST_SHARE, GUEST_TMPFS

if TYPE_CHECKING:  # images needs the docker package, which is optional for qemu
    from pytest_hostperf.images.requirements import ImageDependencies


#: The share axis beyond ``share``: mount name -> (file system, guest path). Asked for by
#: name (``--hostperf-mounts`` or the marker's ``mounts=``), never by default.
AXIS_SHARES: dict[str, tuple[str, str]] = {"share-9p": ("9p", GUEST_SHARE + "-9p"),
                                           "share-nfs": ("nfs", GUEST_SHARE + "-nfs")}


class QemuEnvironment(Environment):
    """A QEMU VM booted once per session from a cached disk built from the docker image.

    ``disk`` is a prebuilt :class:`vm.VmDisk`; else ``vm_image`` (a VM disk directory
    with ``disk.json``, its ``disk.img``, or a root filesystem directory); else ``rootfs``
    (directory, tar stream or chunks, identified by ``rootfs_key``) is turned into one;
    else the docker backend's project image (``image``/``requirements``) is exported.

    ``vcpus`` defaults to 1 under TCG (measurably faster and steadier for single-threaded
    Python on small hosts) and 2 with KVM/HVF. ``accel`` is "auto" (hardware first, TCG
    as fallback), "kvm", "hvf" or "tcg"; a hardware accelerator that shows no guest
    output within ``first_output_timeout`` seconds is given up. ``share`` is "auto",
    "9p", "virtiofs" or "copy". ``init`` replaces the guest init (tests use it to
    simulate broken guests). ``mounts`` names the mounts the session uses (None: the
    default ones); ``share-9p`` and ``share-nfs`` exist only when named there.
    """

    name = "qemu"

    def __init__(self, project_dir: Path, *, session_id: Optional[str] = None, disk: Optional[vm.VmDisk] = None,
                 rootfs: Optional[vm.RootfsSource] = None, rootfs_key: str = "", cache_dir: Optional[Path] = None,
                 vcpus: Optional[int] = None, memory_mb: int = 1024, accel: str = "auto", boot_timeout: float = 120.0,
                 accel_probe_timeout: float = 30.0, first_output_timeout: float = 5.0, kernel: Optional[Path] = None,
                 init: str = vm.GUEST_INIT, network: bool = False, qemu_binary: Optional[str] = None,
                 reporter: Reporter = SILENT, docker_client: Any = None, die_with_controller: bool = True,
                 share: str = "auto", work_dir: Optional[Path] = None, image: Optional[str] = None,
                 vm_image: Optional[str] = None, requirements: Sequence[str] = (),
                 exclude: Sequence[Path] = (), dependencies: Optional[ImageDependencies] = None,
                 mounts: Optional[Sequence[str]] = None) -> None:
        if share != "auto" and share not in shares.MODES:
            raise ValueError(f"share must be auto or one of {', '.join(shares.MODES)}, not {share!r}")
        self.project_dir = Path(project_dir).resolve()
        # Goes into qemu's -name and socket paths: short, and a well-formed session id.
        self.session_id = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id or secrets.token_hex(6))[:32].lstrip("_.-") \
            or secrets.token_hex(6)
        self.vcpus = vcpus
        self.memory_mb = memory_mb
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.accel_probe_timeout = accel_probe_timeout
        self.first_output_timeout = first_output_timeout
        self.kernel = Path(kernel) if kernel is not None else None
        self.init = init
        self.network = network
        self.qemu_binary = qemu_binary or "qemu-system-x86_64"
        self.reporter = reporter
        self._disk = disk
        self._rootfs = rootfs
        self._rootfs_key = rootfs_key
        self._cache_dir = Path(cache_dir) if cache_dir else vm.default_cache_dir()
        self._docker_client = docker_client
        self.work_dir = Path(work_dir) if work_dir is not None else None  # console log kept here
        self.user_image = image
        self.vm_image = Path(vm_image) if vm_image else None
        self.requirements = tuple(requirements)
        self.dependencies = dependencies  # the controller environment's distributions, for the image
        self.exclude = tuple(Path(p) for p in exclude)
        # PR_SET_PDEATHSIG: qemu and virtiofsd die with the controller (Linux only; a
        # controller that is SIGKILLed elsewhere is cleaned up by the next sweep_stale()).
        self.die_with_controller = die_with_controller
        self._share_request = share
        self._mode: Optional[shares.ShareMode] = None
        self._workdir: Optional[Path] = None
        self._machine: Optional[Machine] = None
        self._host_shares: Optional[HostShares] = None
        self._transport: Optional[boot.QemuTransport] = None
        self._shares: list[shares.Share] = []
        self._info: dict[str, Any] = {"vcpus": vcpus, "memory_mb": memory_mb}
        self._wanted: Optional[set[str]] = set(mounts) if mounts is not None else None
        self._boot_disk: Optional[vm.VmDisk] = None
        self._unavailable: dict[str, str] = {}

    # ------------------------------------------------------------------ contract

    def check(self) -> None:
        if boot.find_qemu(self.qemu_binary) is None:
            raise EnvironmentFailure(self.name, f"{self.qemu_binary} is not installed",
                                     hint="apt-get install qemu-system-x86 qemu-utils (or run .ci/install-qemu.sh)")
        if shutil.which("qemu-img") is None:
            raise EnvironmentFailure(self.name, "qemu-img is not installed",
                                     hint="apt-get install qemu-utils (or run .ci/install-qemu.sh)")
        if self._disk is None and self.kernel is not None:
            try:
                vm.explicit_kernel(self.kernel, None)
            except vm.VmImageError as exc:
                raise EnvironmentFailure(self.name, str(exc), hint=exc.hint) from None
        if self._disk is None and self.kernel is None and self._rootfs is None:
            try:
                vm.find_host_kernel()
            except vm.VmImageError as exc:
                # The image may bring its own kernel; only fail when it cannot.
                self._info.setdefault("warnings", []).append(str(exc))

    def use_mounts(self, names: Sequence[str]) -> None:
        """The mounts this session's items use: they decide the guest kernel and the shares."""
        self._wanted = set(names)
        self._mode = None
        self._boot_disk = None

    def mounts(self) -> Sequence[Mount]:
        mode = self.share_mode()
        mounts = [Mount("guest", GUEST_OWN, "a directory on the VM's own ext4 disk (qcow2 overlay)")]
        if mode.offers_share:
            mounts.append(Mount("share", GUEST_SHARE, f"a host directory shared into the VM over {mode.name}"))
        for name, (kind, path) in AXIS_SHARES.items():
            if self._wants(name):
                mounts.append(Mount(name, path, f"a host directory shared into the VM over {kind}"))
        mounts.append(Mount("tmpfs", GUEST_TMPFS, "a tmpfs inside the VM"))
        return tuple(mounts)

    def mount_problem(self, mount: str) -> Optional[str]:
        return self._unavailable.get(mount)

    def mount_facts(self, mount: str) -> Mapping[str, Any]:
        return dict((self._info.get("shares") or {}).get(mount) or {})

    def agent_start_timeout(self) -> float:
        # start_agent has already booted the VM; this covers the agent's own start
        # (python + pytest import + collection), ~10x slower under TCG.
        return 180.0

    def match_facts(self) -> Mapping[str, Any]:
        # TCG vs KVM is a 10x difference; vCPUs and memory change timings too. The qemu
        # and kernel versions are context only (see describe()).
        return {"qemu": {key: self._info.get(key) for key in ("accelerator", "vcpus", "memory_mb")}}

    def launch_for(self, project_dir: Path, test_files: tuple[str, ...], pytest_args: tuple[str, ...]) -> AgentLaunch:
        host = AgentLaunch(sys.executable, str(package_parent()), str(project_dir), tuple(test_files),
                           tuple(pytest_args), self.name)
        return self._guest_launch(host, self.boot_disk())

    def describe(self) -> Mapping[str, Any]:
        return {k: v for k, v in self._info.items() if not k.startswith("_")}

    def start_agent(self, launch: AgentLaunch) -> boot.QemuTransport:
        if self._transport is not None or self._workdir is not None:
            # A restart after a crash, a timeout or a dead VM: throw the old VM away, boot a fresh one.
            self.stop()
        self.check()
        workdirs.sweep_stale()   # and the NFS servers of dead sessions
        disk = self.boot_disk()
        self._workdir = workdir = workdirs.make_workdir(self.session_id)
        self._info["_started"] = time.monotonic()
        mode = self.share_mode()
        self._shares = mode.plan(self.project_dir, workdir)
        if mode.name == "copy":
            shares.build_copy_disk(self.project_dir, workdir, [*self.exclude, *self._skip()], self.reporter)
        host = self._start_host_shares(workdir, mode)

        def helpers() -> list[Any]:
            return [*mode.start(self._shares, workdir, self.reporter, self.die_with_controller),
                    *host.start_helpers(workdir)]

        spec = BootSpec.for_disk(
            disk, vcpus=self.vcpus, memory_mb=self.memory_mb, accel=self.accel, init=self.init, network=self.network,
            nic_rules=tuple(host.nic_rules()), devices=(*mode.devices(self._shares, workdir), *host.devices(workdir)),
            qemu_binary=self.qemu_binary, boot_timeout=self.boot_timeout,
            accel_probe_timeout=self.accel_probe_timeout, first_output_timeout=self.first_output_timeout)
        self._machine = Machine(spec, self.session_id, workdir, reporter=self.reporter,
                                die_with_parent=self.die_with_controller, start_helpers=helpers)
        try:
            sock, pending = self._machine.boot()
        finally:
            self._info.update(self._machine.info)
        self._transport = boot.QemuTransport(sock, self._machine.console_log, self._close_vm, pending,
                                             self._agent_ready)
        guest = self._guest_launch(launch, disk)
        message: dict[str, Any] = {"argv": guest.argv(), "environ": {**disk.env, **guest.environ()},
                                   "cwd": guest.project_dir,
                                   "mounts": [*mode.guest_mounts(self._shares, disk), *host.guest_mounts()]}
        if self.network or host.needs_network:
            message["network"] = USER_NETWORK
        self._machine.launch(sock, message)
        return self._transport

    def stop(self) -> None:
        try:
            if self._transport is not None:
                self._transport.close()
        except Exception:  # noqa: BLE001 - stop() never raises
            pass
        finally:
            self._transport = None
            self._close_vm()
            if self._host_shares is not None:
                self._host_shares.stop()
                self._host_shares = None
            if self._workdir is not None:
                self._keep_console_log(self._workdir)
                shares.release_mounts(self._workdir)
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    # ------------------------------------------------------------------ disk, kernel and shares

    def prepare(self) -> vm.VmDisk:
        """The VM disk, built (or found in the cache) on first use."""
        if self._disk is not None:
            return self._disk
        try:
            if self.vm_image is not None:
                self._disk = disk_from_path(self.vm_image, self._cache_dir, self.reporter, self.kernel)
            elif self._rootfs is not None:
                self._disk = vm.build_vm_disk(self._rootfs, self._cache_dir, self._rootfs_key, self.reporter,
                                              kernel=self.kernel)
            else:
                self._disk = self._disk_from_docker_image()
        except vm.VmImageError as exc:
            raise EnvironmentFailure(self.name, str(exc), hint=exc.hint, log_tail=exc.log_tail) from None
        return self._disk

    def boot_disk(self) -> vm.VmDisk:
        """The disk as it boots: with its own kernel, or with the generic one when 9p is needed."""
        if self._boot_disk is not None:
            return self._boot_disk
        disk = self.prepare()
        if self._needs_generic_kernel(disk):
            from pytest_hostperf.vm import guest_kernel

            try:
                kernel = guest_kernel.ensure_guest_kernel(progress=self.reporter.step)
            except (guest_kernel.GuestKernelError, OSError) as exc:
                # The other mounts still work with the disk's own kernel.
                self._unavailable["share-9p"] = f"no guest kernel with 9p could be prepared: {exc}"
                self._mode = None
            else:
                disk = dataclasses.replace(disk, kernel=kernel.kernel, initrd=kernel.initrd, root_device="virtio",
                                           kernel_version=kernel.version, share_fs=self._generic_share_fs())
                self._info["guest_kernel"] = {"package": kernel.package, "initramfs_bytes": kernel.initrd_bytes,
                                              "why": "share-9p: the disk's own kernel has no 9p"}
        self._boot_disk = disk
        return disk

    def share_mode(self) -> shares.ShareMode:
        """How the project reaches this VM (decided from the kernel it boots, on first use)."""
        if self._mode is None:
            disk = self.prepare()
            if self._needs_generic_kernel(disk):
                disk = dataclasses.replace(disk, share_fs=self._generic_share_fs())
            self._mode = shares.choose_mode(self._share_request, disk, shares.find_virtiofsd(), _euid())
            self._info["share_fs"] = self._mode.name
        return self._mode

    def _wants(self, mount: str) -> bool:
        return self._wanted is not None and mount in self._wanted

    def _needs_generic_kernel(self, disk: vm.VmDisk) -> bool:
        return self._wants("share-9p") and disk.share_fs != "9p" and "share-9p" not in self._unavailable

    @staticmethod
    def _generic_share_fs() -> str:
        # The generic kernel mounts both: `share` stays virtiofs where virtiofsd can run.
        return "virtiofs" if shares.find_virtiofsd() is not None and _euid() == 0 else "9p"

    def _start_host_shares(self, workdir: Path, mode: shares.ShareMode) -> HostShares:
        """The session's share-9p/share-nfs; a mount this host cannot serve is left out with the reason."""
        facts: dict[str, dict[str, Any]] = {}
        if mode.offers_share:
            facts["share"] = {"via": mode.name, **shares.mode_facts(mode, workdir / "share")}
        wanted = []
        for name, (kind, path) in AXIS_SHARES.items():
            if not self._wants(name) or name in self._unavailable:
                continue
            problem = unavailable_reason(kind, shares.find_virtiofsd(), _euid())
            if problem:
                self._unavailable[name] = problem
                continue
            wanted.append(HostShare(kind, workdir / name, path))
        host = HostShares(wanted, self.session_id, self.name, reporter=self.reporter,
                          die_with_parent=self.die_with_controller)
        try:
            host.prepare()
        except EnvironmentFailure as exc:   # the NFS server: only that mount is lost
            host.stop()
            self._unavailable["share-nfs"] = str(exc)
            host = HostShares([s for s in wanted if s.kind != "nfs"], self.session_id, self.name,
                              reporter=self.reporter, die_with_parent=self.die_with_controller)
            host.prepare()
        self._host_shares = host
        kinds = host.facts()
        for name, (kind, _) in AXIS_SHARES.items():
            if kind in kinds:
                facts[name] = {"via": kind, **kinds[kind]}
        self._info["shares"] = facts
        if self._unavailable:
            self._info["unavailable_mounts"] = dict(self._unavailable)
        return host

    def _disk_from_docker_image(self) -> vm.VmDisk:
        try:
            from pytest_hostperf import images
            from pytest_hostperf.environments.docker import connect
        except ImportError as exc:
            raise EnvironmentFailure(self.name, f"cannot build the VM disk: {exc}",
                                     hint="pip install docker, or pass a prebuilt VM disk "
                                          "(--hostperf-vm-image)") from None
        try:
            client = self._docker_client or connect()
            ref = images.ensure_image(client, self.project_dir, self.user_image, self.requirements, self.reporter,
                                      dependencies=self.dependencies)
        except Exception as exc:  # noqa: BLE001 - EnvironmentFailure, ImageBuildError, docker errors
            raise EnvironmentFailure(
                self.name, f"the VM disk is made from the docker image, which is not available: {exc}",
                hint="run `hostperf image build --vm` (needs a Docker engine: .ci/install-docker.sh), "
                     "or pass a VM disk or root filesystem with --hostperf-vm-image") from None
        return prepare_vm_disk(ref, client=client, cache_dir=self._cache_dir, reporter=self.reporter,
                               kernel=self.kernel, session_id=self.session_id)

    def _skip(self) -> list[Path]:
        return [self.work_dir] if self.work_dir is not None else []

    def _guest_launch(self, launch: AgentLaunch, disk: vm.VmDisk) -> AgentLaunch:
        mode = self.share_mode()
        host_project = str(self.project_dir)
        guest_project = mode.project_dir()
        inside = shares.package_in_project(self.project_dir)
        pythonpath = str(Path(guest_project) / inside) if inside is not None else mode.package_dir()

        def remap(arg: str) -> str:
            option, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
            for prefix in (host_project, str(Path(launch.project_dir).resolve())):
                if value == prefix or value.startswith(prefix + os.sep):
                    return option + eq + guest_project + value[len(prefix):]
            return arg

        return dataclasses.replace(
            launch, python=disk.python, pythonpath=pythonpath, project_dir=guest_project,
            test_files=tuple(remap(a) for a in launch.test_files),
            pytest_args=tuple(remap(a) for a in launch.pytest_args), env=launch.env or self.name)

    # ------------------------------------------------------------------ the VM

    def _agent_ready(self) -> None:
        started = self._info.get("_started")
        if started is not None:
            self._info["agent_ready_s"] = round(time.monotonic() - started, 2)
            self.reporter.step(f"agent ready in {self._info['agent_ready_s']:.1f} s "
                               f"(boot {self._info.get('boot_s', 0):.1f} s, {self._info.get('accelerator')})")

    def _close_vm(self) -> None:
        machine, self._machine = self._machine, None
        if machine is not None:
            machine.close()

    def _keep_console_log(self, workdir: Path) -> None:
        if self.work_dir is None:
            return
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / "console.log", self.work_dir / "qemu-console.log")
        except OSError:
            pass


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1
