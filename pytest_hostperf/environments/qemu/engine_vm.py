"""``docker@qemu``'s engine: dockerd inside a QEMU VM, driven from the host by the Docker SDK.

This is the shape of Docker Desktop, colima, Lima and Podman machine: the host's docker
client talks to an engine in a Linux VM over a forwarded socket, and the host's files
reach containers through the VM's file sharing (host dir -> VM share -> bind mount).

- The VM boots the engine disk of :mod:`pytest_hostperf.vm.engine_disk` with the generic
  kernel of :mod:`pytest_hostperf.vm.guest_kernel` (overlay and every share type are in
  its initramfs) through :class:`.machine.Machine`; the guest bootstrap mounts cgroup2,
  the data disk at ``/var/lib/docker``, the project read-only at its host path (bind
  mount sources are paths in the VM, so the project is where the host has it, as Docker
  Desktop and Lima share ``$HOME``) and the writable shares, brings up eth0 and runs the
  engine script.
- Networking is QEMU's user network with ``restrict=on``: the guest can reach nothing;
  the host reaches dockerd through ``hostfwd=tcp:127.0.0.1:PORT-10.0.2.15:2375``
  (``DOCKER_HOST=tcp://127.0.0.1:PORT``) and, for an NFS share, the guest reaches only
  the session's NFS server through a ``guestfwd``. The port is plain TCP on the host's
  loopback: any local user could reach that engine while the session runs.
- ``/var/lib/docker`` is a second disk, cached per (engine disk, images): filled once
  (on the host by a private dockerd of the same version, :mod:`pytest_hostperf.vm.engine_data`,
  or else through the VM's own engine), then every session boots a throwaway qcow2
  overlay on it, so the images are there at once and nothing a session does persists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Optional, Sequence

from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.environments.qemu import shares
from pytest_hostperf.environments.qemu import workdir as workdirs
from pytest_hostperf.environments.qemu.host_shares import USER_NETWORK, HostShare, HostShares
from pytest_hostperf.environments.qemu.machine import BootSpec, Machine, data_drive
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm import engine_data, engine_disk
from pytest_hostperf.vm.cache import default_cache_dir
from pytest_hostperf.vm.guest_kernel import GuestKernel
from pytest_hostperf.vm.model import VmDisk

ENV_NAME: Final = "docker@qemu"
#: Where the writable shares are inside the engine VM: ``<root>/<kind>``.
GUEST_SHARE_ROOT: Final = "/hostperf/shares"
DATA_DISK_MB: Final = 8192    # sparse: only what the images use is written
STOPPED_MARK: Final = b"@@engine-stopped"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EngineVM:
    """A Docker engine in a VM for one session; :meth:`start` returns an SDK client.

    ``images`` are tags in ``host_client``'s engine that must exist in the VM's engine
    (loaded once into the cached data disk under ``cache_dir``); ``share_kinds`` the
    writable host directories to share (``virtiofs``, ``9p``, ``nfs``: made in the VM's
    work dir, :meth:`host_path`; at :func:`guest_path` in the VM); ``readonly`` the
    directories shared read-only at their own path (the project and the agent package).
    """

    def __init__(self, disk: VmDisk, kernel: GuestKernel, *, session_id: str, host_client: Any,
                 images: Sequence[str] = (), share_kinds: Sequence[str] = (), readonly: Sequence[Path] = (),
                 cache_dir: Optional[Path] = None, memory_mb: int = 1536, vcpus: Optional[int] = None,
                 accel: str = "auto", fill_on_host: bool = True, reporter: Reporter = SILENT,
                 die_with_parent: bool = True, boot_timeout: float = 600.0) -> None:
        self.disk = disk
        self.kernel = kernel
        self.session_id = session_id
        self.host_client = host_client
        self.images = tuple(images)
        self.share_kinds = tuple(share_kinds)
        self.readonly = tuple(Path(p) for p in readonly)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "engine-data"
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.accel = accel
        # Fill the data disk with a private dockerd on the host (seconds) when its version
        # is the VM's; else through the VM's engine (778 s for 164 MB under loaded TCG).
        self.fill_on_host = fill_on_host
        self.reporter = reporter
        self.die_with_parent = die_with_parent
        self.boot_timeout = boot_timeout
        self.timings: dict[str, float] = {}
        self.port: Optional[int] = None
        self.client: Any = None
        self.info: dict[str, Any] = {}
        self.host_shares: Optional[HostShares] = None
        self._machine: Optional[Machine] = None
        self._sock: Optional[socket.socket] = None
        self._workdir: Optional[Path] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 600.0) -> Any:
        """Boot the VM on the cached data disk, wait for dockerd; return a DockerClient."""
        started = time.monotonic()
        data = self.ensure_data_disk(timeout)
        self.timings["data_disk_s"] = round(time.monotonic() - started, 2)
        begun = time.monotonic()
        self._boot(data, keep=False, timeout=timeout)
        self.timings["startup_s"] = round(time.monotonic() - begun, 2)
        self.reporter.step(f"engine answers on 127.0.0.1:{self.port} after {self.timings['startup_s']:.1f} s "
                           f"(boot {self.info.get('boot_s', 0):.1f} s)")
        return self.client

    def stop(self) -> None:
        """Kill the VM, stop the share servers, remove the work dir. Never raises."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        machine, self._machine = self._machine, None
        if machine is not None:
            machine.close(patience=0.0)
        if self.host_shares is not None:
            self.host_shares.stop()
            self.host_shares = None
        if self._workdir is not None:
            shares.release_mounts(self._workdir)
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def workdir(self) -> Optional[Path]:
        return self._workdir

    def host_path(self, kind: str) -> Optional[Path]:
        """The host directory shared as ``kind`` (in the VM's work dir, removed by :meth:`stop`)."""
        return self._workdir / f"share-{kind}" if self._workdir is not None else None

    def describe(self) -> dict[str, Any]:
        """Facts for the fingerprint: an engine in a VM, its accelerator and kernel, its shares."""
        facts = {key: self.info.get(key) for key in ("accelerator", "vcpus", "qemu", "fallback_reason", "boot_s")}
        return {**facts, "hypervisor": "qemu", "memory_mb": self.memory_mb, "kernel": self.kernel.version,
                "kernel_package": self.kernel.package,
                "docker_host": f"tcp://127.0.0.1:{self.port}" if self.port else None,
                "shares": self.host_shares.facts() if self.host_shares else {}, **self.timings}

    # ------------------------------------------------------------------ data disk

    def data_disk_key(self) -> str:
        ids = sorted(str(self.host_client.images.get(tag).id) for tag in self.images)
        return hashlib.sha256("\0".join([self.disk.key, *ids]).encode()).hexdigest()[:20]

    def ensure_data_disk(self, timeout: float) -> Path:
        """``/var/lib/docker`` with the images loaded; built by the first session."""
        directory = self.cache_dir / self.data_disk_key()
        image = directory / "data.img"
        if (directory / "data.json").is_file():
            return image
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / f".{directory.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (directory / "data.json").is_file():
                return image
            for leftover in self.cache_dir.glob(f".build-{directory.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)   # a killed build's; we hold its lock
            staging = Path(tempfile.mkdtemp(prefix=f".build-{directory.name}-", dir=self.cache_dir))
            try:
                self._build_data_disk(staging / "data.img", timeout)
                if directory.exists():
                    shutil.rmtree(directory)
                staging.rename(directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return image

    def _build_data_disk(self, image: Path, timeout: float) -> None:
        self.reporter.step(f"building the engine's data disk ({', '.join(self.images) or 'no images'})")
        started = time.monotonic()
        if self.fill_on_host and engine_data.host_dockerd_version() == engine_disk.engine_version(self.disk):
            try:
                engine_data.fill_on_host(image, self.host_client, self.images, DATA_DISK_MB, self.reporter,
                                         session_id=self.session_id)
                self._write_manifest(image, "host", started)
                return
            except engine_data.DataDiskError as exc:
                self.reporter.warn(f"{exc}; loading the images through the VM's engine instead")
        self._fill_in_vm(image, timeout)
        self._write_manifest(image, "vm", started)

    def _write_manifest(self, image: Path, how: str, started: float) -> None:
        (image.parent / "data.json").write_text(json.dumps(
            {"engine_disk": self.disk.key, "images": list(self.images), "filled_by": how,
             "build_s": round(time.monotonic() - started, 1)}, indent=2) + "\n")

    def _fill_in_vm(self, image: Path, timeout: float) -> None:
        shutil.rmtree(image.parent / "data-root", ignore_errors=True)   # a failed host fill's
        proc = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "hostperf-docker", "-F", str(image),
                               f"{DATA_DISK_MB}M"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        if proc.returncode != 0:
            raise EnvironmentFailure(ENV_NAME, "could not create the engine's data disk", log_tail=proc.stdout)
        self._boot(image, keep=True, timeout=timeout)
        try:
            for tag in self.images:
                self.reporter.step(f"loading {tag} into the VM's engine")
                self.client.images.load(self.host_client.images.get(tag).save(named=True))
            assert self._sock is not None and self._machine is not None
            self._sock.sendall(b"stop\n")   # the engine script stops dockerd and syncs
            out = _read_until(self._sock, STOPPED_MARK, 120.0)
            if STOPPED_MARK not in out or self._machine.wait_exit(60) is None:
                raise EnvironmentFailure(ENV_NAME, "the engine did not shut down cleanly after loading images",
                                         log_tail=out.decode(errors="replace"))
        finally:
            self.stop()

    # ------------------------------------------------------------------ boot

    def _boot(self, data: Path, *, keep: bool, timeout: float) -> None:
        """Boot with ``data`` as /var/lib/docker: the image itself (``keep``) or an overlay on it."""
        session = f"{self.session_id}-dq" + ("-fill" if keep else "")
        workdirs.sweep_stale()   # VMs and NFS servers of dead sessions
        self._workdir = workdir = workdirs.make_workdir(session)
        try:
            self.port = free_port()
            if keep:
                drive = data_drive(data, fmt="raw", keep=True)
                host = HostShares((), session, ENV_NAME)   # nothing shared while the disk is filled
            else:
                overlay = workdir / "docker-data.qcow2"
                _overlay(data, overlay)
                drive = data_drive(overlay)
                wanted = [HostShare(kind, workdir / f"share-{kind}", guest_path(kind)) for kind in self.share_kinds]
                host = HostShares(wanted, session, ENV_NAME, reporter=self.reporter,
                                  die_with_parent=self.die_with_parent)
            self.host_shares = host
            host.prepare()
            readonly = [] if keep else [shares.Share(f"ro{index}", path, str(path), True)
                                        for index, path in enumerate(self.readonly)]
            spec = BootSpec(
                disk=self.disk, kernel=self.kernel.kernel, initrd=self.kernel.initrd, root_device="virtio",
                kernel_version=self.kernel.version, vcpus=self.vcpus, memory_mb=self.memory_mb, accel=self.accel,
                nic_rules=(f"hostfwd=tcp:127.0.0.1:{self.port}-{USER_NETWORK['address']}:{engine_disk.ENGINE_PORT}",
                           *host.nic_rules()),
                devices=(drive, *(shares.ninep_device(s) for s in readonly), *host.devices(workdir)),
                boot_timeout=self.boot_timeout)
            self._machine = Machine(spec, session, workdir, reporter=self.reporter,
                                    die_with_parent=self.die_with_parent,
                                    start_helpers=lambda: host.start_helpers(workdir))
            try:
                self._sock, _ = self._machine.boot()
            finally:
                self.info.update(self._machine.info)
            mounts = [{"source": "cgroup2", "target": "/sys/fs/cgroup", "fstype": "cgroup2", "options": ""},
                      {"source": "/dev/vdb", "target": "/var/lib/docker", "fstype": "ext4", "options": ""},
                      *(shares.ninep_mount(s) for s in readonly), *host.guest_mounts()]
            self._machine.launch(self._sock, {"argv": ["/bin/sh", "-c", engine_disk.engine_script()],
                                              "mounts": mounts, "network": USER_NETWORK, "environ": {}, "cwd": "/"})
            self.client = self._wait_engine(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_engine(self, timeout: float) -> Any:
        import docker

        assert self._machine is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self._machine.running:
                break
            try:
                # The client asks the engine its API version as it is made: a refused
                # or reset connection here means dockerd is not listening yet.
                client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{self.port}", timeout=1800)
                client.ping()
                return client
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.5)
        from pytest_hostperf.environments.process import tail_file

        raise EnvironmentFailure(ENV_NAME, f"dockerd in the VM did not answer on 127.0.0.1:{self.port} "
                                 f"within {timeout:.0f} s ({last})", hint="look at the VM's console below",
                                 log_tail=tail_file(self._machine.console_log, 30))


def guest_path(kind: str) -> str:
    """Where the writable share of ``kind`` is inside the engine VM (a bind mount's source)."""
    return f"{GUEST_SHARE_ROOT}/{kind}"


def _overlay(base: Path, overlay: Path) -> None:
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if made.returncode != 0:
        raise EnvironmentFailure(ENV_NAME, f"qemu-img could not put an overlay on {base}", log_tail=made.stdout)


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    """What the engine script writes until ``marker`` (or the port closes, or ``timeout``)."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    return out
