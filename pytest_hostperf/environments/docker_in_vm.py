"""``docker@qemu``: the Docker engine inside a QEMU VM, driven from the host by the SDK.

This is the shape of Docker Desktop, colima, Lima and Podman machine: the host's docker
client talks to an engine in a Linux VM over a forwarded socket, and the host's files
reach containers through the VM's file sharing (host dir -> VM share -> bind mount).

- The VM boots the engine disk of :mod:`pytest_hostperf.vm.docker_engine` with the
  generic kernel of :mod:`pytest_hostperf.vm.guest_kernel` (overlay and every share
  type are in its initramfs); the guest bootstrap mounts cgroup2, the data disk at
  ``/var/lib/docker`` and the shares, brings up eth0 and runs dockerd.
- Networking is QEMU's user network with ``restrict=on``: the guest can reach nothing;
  the host reaches dockerd through ``hostfwd=tcp:127.0.0.1:PORT-10.0.2.15:2375``
  (``DOCKER_HOST=tcp://127.0.0.1:PORT``) and, for an NFS share, the guest reaches only
  the session's NFS server through a ``guestfwd``.
- ``/var/lib/docker`` is a second disk, cached per (engine disk, images): the first
  session loads the images from the host's engine (``docker save`` -> ``docker load``)
  and shuts the engine down cleanly; every later session boots a throwaway qcow2
  overlay on it, so the images are there at once and nothing a session does persists.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pytest_hostperf import vmimage
from pytest_hostperf.environments import nfs as nfs_server
from pytest_hostperf.environments import vmshares
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.vm import docker_data, docker_engine
from pytest_hostperf.vm.guest import USER_NETWORK, Drive, GuestError, GuestVM, LaunchSpec
from pytest_hostperf.vm.guest_kernel import GuestKernel

__all__ = ["VmDockerEngine", "EngineShare", "GUEST_SHARE_ROOT"]

ENV_NAME = "docker@qemu"
GUEST_SHARE_ROOT = "/hostperf/shares"
DATA_DISK_MB = 8192    # sparse: only what the images use is written
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class EngineShare:
    """A host directory shared into the engine VM at ``GUEST_SHARE_ROOT/<kind>``."""

    kind: str            # "9p" or "nfs"
    host_path: Path

    @property
    def guest_path(self) -> str:
        return f"{GUEST_SHARE_ROOT}/{self.kind}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VmDockerEngine:
    """A Docker engine in a VM for one session; :meth:`start` returns an SDK client.

    ``images`` are tags in ``host_client``'s engine that must exist in the VM's engine;
    they are loaded once into the cached data disk under ``cache_dir``.
    """

    def __init__(self, engine_disk: vmimage.VmDisk, kernel: GuestKernel, *, session_id: str,
                 host_client: Any, images: Sequence[str] = (), shares: Sequence[EngineShare] = (),
                 cache_dir: Optional[Path] = None, memory_mb: int = 1536, vcpus: int = 1,
                 accel: str = "tcg", fill_on_host: bool = True, progress: Optional[Progress] = None) -> None:
        self.engine_disk = engine_disk
        self.kernel = kernel
        self.session_id = session_id
        self.host_client = host_client
        self.images = tuple(images)
        self.shares = tuple(shares)
        self.cache_dir = Path(cache_dir) if cache_dir else vmimage.default_cache_dir() / "engine-data"
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.accel = accel   # "kvm" where it works; the qemu backend's probe decides
        # Fill the data disk with a private dockerd on the host (seconds) when its version
        # is the VM's; else through the VM's engine (778 s for 164 MB under loaded TCG).
        self.fill_on_host = fill_on_host
        self.progress: Progress = progress or (lambda _msg: None)
        self.timings: dict = {}
        self.port: Optional[int] = None
        self._vm: Optional[GuestVM] = None
        self._nfs: Optional[nfs_server.NfsExport] = None
        self.client: Any = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 300.0) -> Any:
        """Boot the VM on the cached data disk, wait for dockerd; return a DockerClient."""
        started = time.monotonic()
        data = self.ensure_data_disk(timeout)
        self.timings["data_disk_s"] = round(time.monotonic() - started, 2)
        t0 = time.monotonic()
        self._boot(Drive(data, fmt="qcow2"), session=self.session_id, overlay_of=data, timeout=timeout)
        self.timings["startup_s"] = round(time.monotonic() - t0, 2)
        self.progress(f"{ENV_NAME}: engine ready in {self.timings['startup_s']:.1f} s "
                      f"(boot {self.timings['boot_s']:.1f} s)")
        return self.client

    def stop(self) -> None:
        """Kill the VM, stop the NFS server, remove the work dir. Never raises."""
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
            self.client = None
        if self._vm is not None:
            self._vm.stop()
            self._vm = None
        if self._nfs is not None:
            self._nfs.stop()
            self._nfs = None

    def describe(self) -> dict:
        """Facts for the fingerprint: an engine in a VM, how it is reached, its shares."""
        return {"engine_in_vm": True, "accelerator": self.accel, "kernel": self.kernel.version,
                "docker_host": f"tcp://127.0.0.1:{self.port}" if self.port else None,
                "shares": {share.kind: share.guest_path for share in self.shares}, **self.timings}

    # ------------------------------------------------------------------ data disk

    def data_disk_key(self) -> str:
        ids = sorted(self.host_client.images.get(tag).id for tag in self.images)
        digest = hashlib.sha256("\0".join([self.engine_disk.key, *ids]).encode())
        return digest.hexdigest()[:20]

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
        self.progress(f"{ENV_NAME}: building the engine's data disk (loading {', '.join(self.images) or 'nothing'})")
        started = time.monotonic()
        if self.fill_on_host and docker_data.host_dockerd_version() == docker_engine.engine_version(self.engine_disk):
            try:
                docker_data.fill_on_host(image, self.host_client, self.images, DATA_DISK_MB, self.progress)
                self._write_manifest(image, "host", started)
                return
            except docker_data.DataDiskError as exc:
                self.progress(f"{ENV_NAME}: WARNING: {exc}; loading the images through the VM's engine instead")
        self._fill_in_vm(image, timeout)
        self._write_manifest(image, "vm", started)

    def _write_manifest(self, image: Path, how: str, started: float) -> None:
        (image.parent / "data.json").write_text(json.dumps(
            {"engine_disk": self.engine_disk.key, "images": list(self.images), "filled_by": how,
             "build_s": round(time.monotonic() - started, 1)}, indent=2) + "\n")

    def _fill_in_vm(self, image: Path, timeout: float) -> None:
        shutil.rmtree(image.parent / "data-root", ignore_errors=True)   # a failed host fill's
        proc = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "hostperf-docker", "-F", str(image),
                               f"{DATA_DISK_MB}M"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise EnvironmentFailure(ENV_NAME, "could not create the engine's data disk", log_tail=proc.stdout)
        # writeback, not unsafe: this disk is kept, so the guest's flushes must reach it.
        self._boot(Drive(image, cache="writeback"), session=self.session_id + "-data", overlay_of=None,
                   timeout=timeout, with_shares=False)
        try:
            for tag in self.images:
                self.progress(f"{ENV_NAME}: loading {tag} into the VM's engine")
                self.client.images.load(self.host_client.images.get(tag).save(named=True))
            assert self._vm is not None
            self._vm.send(b"stop\n")   # the engine script stops dockerd and syncs
            out = self._vm.read_all(120).decode(errors="replace")
            if self._vm.wait_exit(60) is None or "@@engine-stopped" not in out:
                raise EnvironmentFailure(ENV_NAME, "the engine did not shut down cleanly after loading images",
                                         log_tail=self._vm.console())
        finally:
            self.stop()

    # ------------------------------------------------------------------ boot

    def _boot(self, data: Drive, *, session: str, overlay_of: Optional[Path], timeout: float,
              with_shares: bool = True) -> None:
        self.port = _free_port()
        # restrict=on: the guest reaches nothing; these rules are the only ways in and out.
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.port}-10.0.2.15:{docker_engine.ENGINE_PORT}"]
        qemu_args: list = []
        mounts: list = [{"source": "cgroup2", "target": "/sys/fs/cgroup", "fstype": "cgroup2", "options": ""},
                        {"source": "/dev/vdb", "target": "/var/lib/docker", "fstype": "ext4", "options": ""}]
        for share in self.shares if with_shares else ():
            if share.kind == "9p":
                qemu_args += vmshares.ninep_args(share.host_path, "share9p")
                mounts.append(vmshares.ninep_mount("share9p", share.guest_path))
            elif share.kind == "nfs":
                self._nfs = nfs_server.NfsExport(share.host_path, session, env=ENV_NAME)
                forwards.append(nfs_server.guest_forward(self._nfs.start()))
                mounts.append(self._nfs.guest_mount(share.guest_path))
            else:
                raise EnvironmentFailure(ENV_NAME, f"unknown share type {share.kind!r}", hint="use 9p or nfs")
        self._vm = GuestVM(self.engine_disk.path, self.kernel.kernel, self.kernel.initrd, session_id=session,
                           qemu_args=["-nic", ",".join(["user,model=virtio-net-pci,restrict=on", *forwards]),
                                      *qemu_args],
                           memory_mb=self.memory_mb, vcpus=self.vcpus, accel=self.accel)
        try:
            self._vm.drives.append(self._session_drive(data, overlay_of))
            self.timings["boot_s"] = round(self._vm.boot(timeout), 2)
            self._vm.launch(LaunchSpec(["/bin/sh", "-c", docker_engine.ENGINE_SCRIPT], mounts=mounts,
                                       network=USER_NETWORK))
            self.client = self._wait_engine(timeout)
        except GuestError as exc:
            self.stop()
            raise EnvironmentFailure(ENV_NAME, f"the engine VM did not come up: {exc}",
                                     log_tail=exc.console_tail) from None
        except BaseException:
            self.stop()
            raise

    def _session_drive(self, data: Drive, overlay_of: Optional[Path]) -> Drive:
        """``data`` itself, or a throwaway qcow2 overlay on the cached ``overlay_of``."""
        if overlay_of is None:
            return data
        assert self._vm is not None
        overlay = self._vm.make_workdir() / "docker-data.qcow2"
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(overlay_of), "-F", "raw",
                               str(overlay)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if made.returncode != 0:
            raise EnvironmentFailure(ENV_NAME, f"qemu-img could not put an overlay on {overlay_of}",
                                     log_tail=made.stdout)
        return dataclasses.replace(data, path=overlay)

    def _wait_engine(self, timeout: float) -> Any:
        import docker

        assert self._vm is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self._vm.wait_exit(0) is not None:
                break
            try:
                # The client asks the engine its API version as it is made: a refused
                # or reset connection here means dockerd is not listening yet.
                client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{self.port}", timeout=1800)
                client.ping()
                return client
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.25)
        raise GuestError(f"dockerd in the VM did not answer on 127.0.0.1:{self.port} ({last})", self._vm.console())
