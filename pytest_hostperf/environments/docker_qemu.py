"""The ``docker@qemu`` environment: the docker backend, driving an engine inside a QEMU VM.

Docker Desktop (macOS, Windows), colima, Lima, Rancher Desktop and Podman machine all
run the Docker engine in a Linux VM; the docker client on the host talks to it over a
forwarded socket, and a bind mount's host directory reaches the container through the
VM's file sharing. This is that set-up, built from hostperf's own parts: the
:class:`~pytest_hostperf.environments.docker.DockerEnvironment` unchanged (one warm
container, one agent exec, the same limits and safe defaults), given the SDK client of
:class:`~pytest_hostperf.environments.qemu.engine_vm.EngineVM` instead of the host's.

Mounts (item ids ``test_x[docker@qemu-bind-nfs]``...):

* ``bind-virtiofs``, ``bind-9p``, ``bind-nfs``: a host directory shared into the VM over
  that file system, bind-mounted into the container (Docker Desktop's VirtioFS and gRPC
  FUSE, Lima's 9p, the seed's NFS recipe);
* ``volume``: a named volume, on the VM's own data disk; ``layer``: the container's layer.

The project and the agent package are shared read-only into the VM at their host paths,
so the container's project mount is what it is on a host engine.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Final, Mapping, Optional, Sequence

from pytest_hostperf import images
from pytest_hostperf.environments.base import AgentLaunch, EnvironmentFailure, Mount, package_parent
from pytest_hostperf.environments.docker import DockerEnvironment
from pytest_hostperf.environments.docker.engine import connect
from pytest_hostperf.environments.docker.environment import MOUNTS as HOST_DOCKER_MOUNTS
from pytest_hostperf.environments.docker.transport import AGENT_PARENT
from pytest_hostperf.environments.limits import ContainerLimits
from pytest_hostperf.environments.qemu import boot, shares
from pytest_hostperf.environments.qemu.engine_vm import ENV_NAME, EngineVM, guest_path
from pytest_hostperf.environments.qemu.host_shares import unavailable_reason
from pytest_hostperf.progress import SILENT, Reporter

#: The bind mounts: mount name -> the file system that carries it into the VM.
BIND_SHARES: Final = {"bind-virtiofs": "virtiofs", "bind-9p": "9p", "bind-nfs": "nfs"}
VOLUME: Final = HOST_DOCKER_MOUNTS[1]
LAYER: Final = HOST_DOCKER_MOUNTS[3]


class DockerQemuEnvironment(DockerEnvironment):
    """The agent in a warm container of the project image, on a Docker engine inside a QEMU VM."""

    name = ENV_NAME
    #: The first container start in a TCG guest took 55-77 s here (runc and the shim are Go
    #: binaries, slow to start under emulation); an agent's start a minute more.
    keepalive_timeout = 600.0

    def __init__(self, session_id: str, project_dir: Path, work_dir: Path, image: Optional[str] = None,
                 network: bool = False, cpus: Optional[float] = None, reporter: Reporter = SILENT,
                 requirements: Sequence[str] = (), pids: Optional[int] = None, memory: Optional[str] = None,
                 tmpfs_size: Optional[str] = None, dependencies: Optional[images.ImageDependencies] = None,
                 counting: bool = False, *, accel: str = "auto", vm_memory_mb: int = 1536,
                 vcpus: Optional[int] = None, cache_dir: Optional[Path] = None, host_client: Any = None,
                 mounts: Optional[Sequence[str]] = None) -> None:
        # ``network`` is not offered: the VM's engine runs without a bridge and the VM has
        # no way out but its forwards, so containers get network "none" whatever is asked.
        super().__init__(session_id, project_dir, work_dir, image=image, network=False, cpus=cpus,
                         reporter=reporter, requirements=requirements, pids=pids, memory=memory,
                         tmpfs_size=tmpfs_size, dependencies=dependencies,
                         # Counting under valgrind in an emulated VM is refused as in qemu (~840x).
                         counting=False)
        self.network_asked = network
        self.accel = accel
        self.vm_memory_mb = vm_memory_mb
        self.vcpus = vcpus
        self.cache_dir = cache_dir
        self._host_client = host_client
        self._wanted: set[str] = set(mounts) if mounts is not None else set(BIND_SHARES) | {"volume", "layer"}
        self._unavailable: dict[str, str] = {}
        self.engine: Optional[EngineVM] = None

    # -- Environment

    def check(self) -> None:
        if boot.find_qemu() is None or shutil.which("qemu-img") is None:
            raise EnvironmentFailure(self.name, "qemu-system-x86_64 or qemu-img is not installed",
                                     hint="apt-get install qemu-system-x86 qemu-utils (or run .ci/install-qemu.sh)")
        self.host_client()   # the images come from the host's engine

    def use_mounts(self, names: Sequence[str]) -> None:
        self._wanted = set(names)

    def mounts(self) -> Sequence[Mount]:
        found = [Mount(name, f"/hostperf/{name}", f"host directory shared into the VM over {kind}, "
                                                  "bind-mounted into the container")
                 for name, kind in BIND_SHARES.items() if name in self._wanted]
        found += [Mount(VOLUME.name, VOLUME.path, "named Docker volume on the VM's disk"),
                  Mount(LAYER.name, LAYER.path, "directory in the container's writable layer (in the VM)")]
        return tuple(found)

    def mount_problem(self, mount: str) -> Optional[str]:
        return self._unavailable.get(mount)

    def mount_facts(self, mount: str) -> Mapping[str, Any]:
        kind = BIND_SHARES.get(mount)
        if kind is None or self.engine is None:
            return {}
        return {"via": kind, **self.engine.describe()["shares"].get(kind, {})}

    def agent_start_timeout(self) -> float:
        return 600.0

    def stop(self) -> None:
        # The containers and the volume live in the VM and die with it: only the agent
        # channels are closed (by the base class), then the VM goes. Removing them through
        # a TCG guest's engine would cost seconds each for nothing.
        self._created.container = None
        self._created.volume = None
        super().stop()
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.stop()
        self._client = None
        self._describe = None

    def describe(self) -> Mapping[str, Any]:
        if self._describe is None:
            facts = dict(super().describe())
            assert self.engine is not None
            facts["engine_in_vm"] = self.engine.describe()
            if self._unavailable:
                facts["unavailable_mounts"] = dict(self._unavailable)
            if self.network_asked:
                facts["network_note"] = "--hostperf-network does not apply: the VM's engine has no bridge"
            self._describe = facts
        return self._describe

    def match_facts(self) -> Mapping[str, Any]:
        facts = dict(super().match_facts())
        vm = self.describe()["engine_in_vm"]
        facts["qemu"] = {key: vm.get(key) for key in ("accelerator", "vcpus", "memory_mb")}
        return facts

    # -- the engine in the VM

    def host_client(self) -> Any:
        """The host's Docker engine: the project image is built there and loaded into the VM's."""
        if self._host_client is None:
            self._host_client = connect()
        return self._host_client

    def client(self) -> Any:
        """The VM engine's client: the VM boots on first use."""
        if self._client is None:
            self._client = self._start_engine()
        return self._client

    def image_client(self) -> Any:
        # Built on the host's engine, then loaded into the VM's data disk once.
        return self.host_client()

    def _start_engine(self) -> Any:
        from pytest_hostperf.vm import VmImageError, engine_disk, guest_kernel

        ref = self.image()
        started = time.monotonic()
        try:
            kernel = guest_kernel.ensure_guest_kernel(progress=self._reporter.step)
            disk = engine_disk.ensure_engine_disk(self.host_client(), images.BASE_TAG, reporter=self._reporter,
                                                  session_id=self.session_id)
        except (guest_kernel.GuestKernelError, VmImageError) as exc:
            raise EnvironmentFailure(self.name, f"cannot prepare the engine VM: {exc}",
                                     hint=getattr(exc, "hint", "") or "run scripts/setup.sh as root") from None
        kinds = []
        for name, kind in BIND_SHARES.items():
            if name not in self._wanted:
                continue
            problem = unavailable_reason(kind, shares.find_virtiofsd(), os.geteuid() if hasattr(os, "geteuid") else -1)
            if problem:
                self._unavailable[name] = problem
            else:
                kinds.append(kind)
        package = package_parent() / "pytest_hostperf"
        readonly = [self.project_dir] + ([] if shares.package_in_project(self.project_dir) is not None else [package])
        self.engine = EngineVM(disk, kernel, session_id=self.session_id, host_client=self.host_client(),
                               images=[ref.tag], share_kinds=kinds, readonly=readonly, cache_dir=self.cache_dir,
                               memory_mb=self.vm_memory_mb, vcpus=self.vcpus, accel=self.accel,
                               reporter=self._reporter)
        client = self.engine.start()
        self.engine.timings["engine_ready_s"] = round(time.monotonic() - started, 2)
        return client

    # -- container

    def _docker_mounts(self, launch: AgentLaunch, limits: ContainerLimits) -> list[Any]:
        from docker.types import Mount as DockerMount

        # Paths in the VM: the project and the package are shared in at their host paths.
        package = package_parent() / "pytest_hostperf"
        found = [DockerMount(launch.project_dir, str(self.project_dir), type="bind", read_only=True),
                 DockerMount(f"{AGENT_PARENT}/pytest_hostperf", str(package), type="bind", read_only=True)]
        assert self.engine is not None
        for name, kind in BIND_SHARES.items():
            if kind in self.engine.share_kinds:
                found.append(DockerMount(f"/hostperf/{name}", guest_path(kind), type="bind"))
        volume = self._created.volume
        found.append(DockerMount(VOLUME.path, volume, type="volume"))
        return found
