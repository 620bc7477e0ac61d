"""The docker backend: one warm container per session, one long-lived agent exec in it.

``docker exec`` costs ~45 ms and ``docker run`` ~235 ms, so neither may happen per test:
the container is created on first use with a keep-alive process
(:mod:`pytest_hostperf.agent.keepalive`), the agent is started in it with ONE exec whose
stdin/stdout stay attached as a raw socket, and every request is a line written to that
socket. When the container dies (``docker kill``, the OOM killer), the next
:meth:`DockerEnvironment.start_agent` replaces it with a fresh one.

Everything created is labelled with the session id and its owner (see
:mod:`pytest_hostperf.environments.labels`), so :func:`.sweep.sweep_stale` can remove
what a SIGKILLed run left behind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence

from pytest_hostperf import counting, images
from pytest_hostperf.agent import protocol
from pytest_hostperf.agent.keepalive import READY_MARK
from pytest_hostperf.environments import labels
from pytest_hostperf.environments.base import AgentLaunch, Environment, EnvironmentFailure, Mount, package_parent
from pytest_hostperf.environments.docker.engine import ENV_NAME, classify, connect, unreachable
from pytest_hostperf.environments.docker.sweep import BIND_PREFIX, sweep_stale
from pytest_hostperf.environments.docker.transport import (
    AGENT_PARENT,
    PROJECT_PATH,
    DockerExecTransport,
    container_status,
)
from pytest_hostperf.environments.limits import ContainerLimits
from pytest_hostperf.progress import SILENT, Reporter

if TYPE_CHECKING:
    import docker

MOUNTS: Final = (
    Mount("bind", "/hostperf/bind", "host directory bind-mounted into the container"),
    Mount("volume", "/hostperf/volume", "named Docker volume of this session"),
    Mount("tmpfs", "/hostperf/tmpfs", "tmpfs mount (memory)"),
    Mount("layer", "/var/tmp/hostperf-layer", "directory in the container's writable layer"),
)
#: Where a counting agent's callgrind writes its dumps: a tmpfs of its own, the same path
#: in every session (the path lives in callgrind's memory beside the counted program's).
COUNT_DUMP_DIR: Final = "/hostperf/callgrind"
#: What the keep-alive prepares for the agent's uid: the volume (root-owned) and the layer dir.
_PREPARED: Final = (MOUNTS[1].path, MOUNTS[3].path)


@dataclasses.dataclass
class _Session:
    """What the environment created, so stop() knows what to remove."""

    container: Any = None
    volume: str | None = None
    bind_dir: Path | None = None
    transports: list[DockerExecTransport] = dataclasses.field(default_factory=list)


class DockerEnvironment(Environment):
    """Runs the agent in a warm container of the project image (built offline if needed)."""

    name = ENV_NAME
    #: Seconds a new container may take to start its keep-alive process.
    keepalive_timeout = 30.0

    def __init__(self, session_id: str, project_dir: Path, work_dir: Path, image: str | None = None,
                 network: bool = False, cpus: float | None = None, reporter: Reporter = SILENT,
                 requirements: Sequence[str] = (), pids: int | None = None, memory: str | None = None,
                 tmpfs_size: str | None = None, dependencies: images.ImageDependencies | None = None,
                 counting: bool = False) -> None:
        self.session_id = session_id
        self.project_dir = Path(project_dir).resolve()
        self.work_dir = Path(work_dir)
        self.user_image = image
        self.network = network
        self.cpus = cpus
        self.requirements = tuple(requirements)
        self.dependencies = dependencies  # the controller environment's distributions, for the image
        # Counting sessions build on the base with Debian's valgrind (images/ref.py).
        self.counting = counting
        self.base = images.COUNTING_BASE_TAG if counting else images.BASE_TAG
        self._limit_settings = (pids, memory, tmpfs_size)
        self._reporter = reporter
        self._client: docker.DockerClient | None = None
        self._image: images.ImageRef | None = None
        self._limits: ContainerLimits | None = None
        self._created = _Session()
        self._describe: dict[str, Any] | None = None
        self._base_name = "hostperf-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", session_id)
        self._generation = 0   # containers made so far: a replacement gets a new name

    # -- Environment

    def check(self) -> None:
        client = self.client()
        try:
            client.ping()   # it answered when connected; it may have gone since (a crash, a restart)
        except Exception as exc:  # noqa: BLE001 - requests and docker errors alike
            raise unreachable(exc) from exc
        # A session that was SIGKILLed could not clean up: its labelled containers and
        # volumes are removed here, at the start of the next session that uses docker.
        for leftover in sweep_stale(client):
            self._reporter.step(f"removed {leftover} left by a killed session")

    def mounts(self) -> Sequence[Mount]:
        return MOUNTS

    def start_agent(self, launch: AgentLaunch) -> DockerExecTransport:
        return self._exec_agent(launch, launch.argv(), {})

    def start_counting_agent(self, launch: AgentLaunch) -> DockerExecTransport:
        """The agent under callgrind, exec'd in the session's container (same limits, no network).

        ``setarch -R`` is left out: Docker's default seccomp profile refuses it, and under
        valgrind the client's layout repeats anyway (docs/instructions.md).
        """
        if not self.counting:
            raise EnvironmentFailure(ENV_NAME, "this docker environment was made without counting=True (its "
                                               "container has no dump directory for callgrind)")
        container = self._container(launch)
        try:
            found = container.exec_run(["valgrind", "--version"], user=self.agent_user())
            works = found.exit_code == 0
        except Exception:  # noqa: BLE001 - docker.errors.APIError: the executable is missing
            works = False
        if not works:
            raise EnvironmentFailure(ENV_NAME, f"valgrind is not installed in the image {self.image().tag}, so "
                                               "instructions cannot be counted in docker",
                                     hint="hostperf's own images have it (rebuild: hostperf image build); add "
                                          "your distribution's valgrind package to a --hostperf-image")
        argv = counting.counting_argv(launch.argv(), COUNT_DUMP_DIR, disable_aslr=False)
        return self._exec_agent(launch, argv, counting.counting_environ(COUNT_DUMP_DIR))

    def _exec_agent(self, launch: AgentLaunch, argv: list[str], extra: Mapping[str, str]) -> DockerExecTransport:
        container = self._container(launch)
        token = os.urandom(8).hex()
        # HOME and USER: the controller's uid has no passwd entry in the image.
        environment = {**launch.environ(), "HOME": "/tmp", "USER": "hostperf", protocol.TOKEN_VAR: token, **extra}
        api = self.client().api
        try:
            exec_id = api.exec_create(container.id, argv, stdin=True, tty=False,
                                      environment=environment, workdir=launch.project_dir,
                                      user=self.agent_user())["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:  # noqa: BLE001 - docker.errors.APIError and transport errors alike
            raise EnvironmentFailure(self.name, f"could not start the agent in container {container.name}: {exc}",
                                     hint="check the image has the interpreter " + repr(launch.python),
                                     log_tail=_container_logs(container)) from exc
        transport = DockerExecTransport(self.client(), container.name, exec_id,
                                        getattr(sock, "_sock", sock), token, launch.python, self.agent_user())
        # The SDK's wrapper owns the HTTP response; keep it alive as long as the socket.
        transport.owner = sock
        self._created.transports.append(transport)
        return transport

    def stop(self) -> None:
        created, self._created = self._created, _Session()
        for transport in created.transports:
            _quietly(transport.close)
        if created.container is not None:
            _quietly(lambda: created.container.remove(force=True))
        if created.volume is not None and self._client is not None:
            _quietly(lambda: self._client.volumes.get(created.volume).remove(force=True))  # type: ignore[union-attr]
        if created.bind_dir is not None:
            shutil.rmtree(created.bind_dir, ignore_errors=True)

    def describe(self) -> Mapping[str, Any]:
        if self._describe is None:
            client = self.client()
            info, version = client.info(), client.version()
            limits = self.limits()
            self._describe = {
                "engine": classify(info, version),
                "api_version": version.get("ApiVersion"),
                "image": self._image.tag if self._image else self.user_image,
                "image_id": self._image.id if self._image else None,
                "nano_cpus": _nano_cpus(self.cpus),
                "network": self.network,
                "limits": {"pids": limits.pids, "memory_bytes": limits.memory_bytes,
                           "tmpfs_bytes": limits.tmpfs_bytes},
            }
        return self._describe

    def match_facts(self) -> Mapping[str, Any]:
        # What the outside knows and changes timings: Docker Desktop vs a native engine,
        # rootless (slirp, fuse-overlayfs) and the storage driver. Versions are context only.
        engine = self.describe()["engine"]
        return {"docker": {key: engine.get(key) for key in ("kind", "rootless", "storage_driver")}}

    def launch_for(self, project_dir: Path, test_files: tuple[str, ...], pytest_args: tuple[str, ...]) -> AgentLaunch:
        # project_dir is the one given at construction (it is what gets mounted at /project).
        return self.launch(test_files, pytest_args)

    def agent_start_timeout(self) -> float:
        # The image is ensured before the agent starts, so this is only container + agent.
        return 60.0

    # -- extras for the session, the CLI and tests

    def client(self) -> docker.DockerClient:
        """The engine client (connects and checks on first use)."""
        if self._client is None:
            self._client = connect()
        return self._client

    def image_client(self) -> docker.DockerClient:
        """The engine the image is built on (this one; docker@qemu builds on the host's)."""
        return self.client()

    def image(self) -> images.ImageRef:
        """The image the agent runs in, built or found in the cache on first use."""
        if self._image is None:
            try:
                self._image = images.ensure_image(self.image_client(), self.project_dir, self.user_image,
                                                  self.requirements, self._reporter, dependencies=self.dependencies,
                                                  base=self.base)
            except images.ImageBuildError as exc:
                raise EnvironmentFailure(self.name, str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - docker.errors.* from the engine while building
                raise EnvironmentFailure(self.name, f"preparing the image failed: {exc}",
                                         hint="run `hostperf image build` to see the whole build") from exc
        return self._image

    def limits(self) -> ContainerLimits:
        """The resource limits of the session's containers (memory relative to the engine's)."""
        if self._limits is None:
            engine_memory = self.client().info().get("MemTotal")
            self._limits = ContainerLimits.resolve(*self._limit_settings,
                                                   engine_memory=int(engine_memory) if engine_memory else None)
        return self._limits

    def launch(self, test_files: Sequence[str], pytest_args: Sequence[str] = ()) -> AgentLaunch:
        """The agent launch in this environment's paths (interpreter from the image)."""
        return AgentLaunch(python=self.image().python, pythonpath=AGENT_PARENT, project_dir=PROJECT_PATH,
                           test_files=tuple(test_files), pytest_args=tuple(pytest_args), env=self.name)

    def agent_user(self) -> str:
        """``uid:gid`` the agent runs as inside the container."""
        return _user(bool(self.describe()["engine"].get("rootless")))

    @property
    def container(self) -> Any:
        """The session's container (a docker-py Container) or None before first use."""
        return self._created.container

    @property
    def bind_dir(self) -> Path | None:
        """Host side of the ``bind`` mount."""
        return self._created.bind_dir

    def __enter__(self) -> DockerEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- container

    def _container(self, launch: AgentLaunch) -> Any:
        container = self._created.container
        if container is not None:
            if container_status(self.client(), container.name) == "running":
                return container
            # Killed (docker kill, OOM) or stopped: a dead container cannot host an agent.
            self._reporter.warn(f"container {container.name} is "
                                f"{container_status(self.client(), container.name)}; starting a fresh one")
            for transport in self._created.transports:
                _quietly(transport.close)
            self._created.transports.clear()
            _quietly(lambda: container.remove(force=True))
            self._created.container = None
        return self._create_container(launch)

    def _create_container(self, launch: AgentLaunch) -> Any:
        ref = self.image()
        client = self.client()
        limits = self.limits()
        owner = labels.owner_labels(self.session_id)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._created.bind_dir is None:
            self._created.bind_dir = Path(tempfile.mkdtemp(prefix=BIND_PREFIX, dir=self.work_dir))
        if self._created.volume is None:
            self._created.volume = client.volumes.create(self._base_name + "-volume", labels=owner).name
        name = self._base_name if self._generation == 0 else f"{self._base_name}-{self._generation}"
        self._generation += 1
        python = ref.python if ref.kind == "project" else launch.python
        try:
            container = client.containers.create(
                ref.tag, [python, "-m", "pytest_hostperf.agent.keepalive", *_PREPARED],
                name=name, labels={**owner, labels.BIND_DIR: str(self._created.bind_dir)},
                environment={"PYTHONPATH": AGENT_PARENT, "PYTHONDONTWRITEBYTECODE": "1"},
                init=True, detach=True, mounts=self._docker_mounts(launch, limits), working_dir=launch.project_dir,
                network_mode=None if self.network else "none",
                cap_drop=["ALL"], security_opt=["no-new-privileges"],
                nano_cpus=_nano_cpus(self.cpus), pids_limit=limits.pids,
                mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes)
            self._created.container = container
            container.start()
        except Exception as exc:  # noqa: BLE001 - any API failure becomes an EnvironmentFailure
            raise EnvironmentFailure(self.name, f"could not create/start container {name} from "
                                     f"{ref.tag}: {exc}", hint="see `docker info` and the engine's log") from exc
        self._wait_keepalive(container)
        return container

    def _docker_mounts(self, launch: AgentLaunch, limits: ContainerLimits) -> list[Any]:
        from docker.types import Mount as DockerMount

        # Only the package directory is shipped: its parent may be a whole site-packages.
        package = package_parent() / "pytest_hostperf"
        return [
            DockerMount(launch.project_dir, str(self.project_dir), type="bind", read_only=True),
            DockerMount(f"{launch.pythonpath}/pytest_hostperf", str(package), type="bind", read_only=True),
            DockerMount(MOUNTS[0].path, str(self._created.bind_dir), type="bind"),
            DockerMount(MOUNTS[1].path, self._created.volume, type="volume"),
            DockerMount(MOUNTS[2].path, None, type="tmpfs", tmpfs_mode=0o1777, tmpfs_size=limits.tmpfs_bytes),
            # Counting sessions only: ~70 KB per counted block, deleted once read.
            *([DockerMount(COUNT_DUMP_DIR, None, type="tmpfs", tmpfs_mode=0o1777, tmpfs_size=64 << 20)]
              if self.counting else []),
        ]

    def _wait_keepalive(self, container: Any) -> None:
        deadline = time.monotonic() + self.keepalive_timeout
        while time.monotonic() < deadline:
            if READY_MARK.encode() in container.logs():
                return
            container.reload()
            if container.status not in ("created", "running"):
                break
            time.sleep(0.01)
        raise EnvironmentFailure(
            self.name, f"container {container.name} did not get ready within {self.keepalive_timeout:.0f} s "
                       f"(status {container.status})",
            hint="the image needs a python3 for the keep-alive process; "
                 "a user image must provide python3 with pytest and pytest-benchmark",
            log_tail=_container_logs(container))


def _user(rootless: bool = False) -> str:
    # The agent runs as the controller's uid so files it leaves in the bind mount are the
    # user's (removable by stop()); with all capabilities dropped, root would gain nothing.
    # A rootless engine maps container root to the user, and any other uid to a subuid.
    if rootless or not hasattr(os, "getuid"):
        return "0:0"
    return f"{os.getuid()}:{os.getgid()}"


def _nano_cpus(cpus: float | None) -> int | None:
    return int(cpus * 1e9) if cpus else None


def _container_logs(container: Any) -> str:
    try:
        return str(container.logs(tail=40).decode(errors="replace"))
    except Exception:  # noqa: BLE001 - only for an error message
        return ""


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - cleanup is best effort and must never raise
        pass
