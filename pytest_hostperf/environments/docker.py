"""The docker backend: one warm container per session, one long-lived agent exec in it.

``docker exec`` costs ~45 ms and ``docker run`` ~235 ms, so neither may happen per test:
the container is created on first use with a keep-alive PID 1, the agent is started in it
with ONE exec whose stdin/stdout stay attached as a raw socket, and every request is a
line written to that socket (a round trip of well under a few ms).

Everything created is labelled with the session id, the controller's pid and host, so
:func:`sweep_stale` can remove what a SIGKILLed run left behind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import select
import shutil
import socket
import struct
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence

from pytest_hostperf import images
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

if TYPE_CHECKING:
    import docker

Progress = Callable[[str], None]

ENV_NAME: Final = "docker"
PROJECT_PATH: Final = "/project"
AGENT_PARENT: Final = "/opt/hostperf-agent"
DEFAULT_SOCKET: Final = "unix:///var/run/docker.sock"
#: Docker 17.06: mounts of type tmpfs, init and nano_cpus all exist from here on.
MIN_API_VERSION: Final = (1, 30)

LABEL_PID: Final = "io.hostperf.pid"
LABEL_HOST: Final = "io.hostperf.host"
LABEL_BIND_DIR: Final = "io.hostperf.bind-dir"
BIND_PREFIX: Final = "docker-bind-"

MOUNTS: Final = (
    Mount("bind", "/hostperf/bind", "host directory bind-mounted into the container"),
    Mount("volume", "/hostperf/volume", "named Docker volume of this session"),
    Mount("tmpfs", "/hostperf/tmpfs", "tmpfs mount (memory)"),
    Mount("layer", "/var/tmp/hostperf-layer", "directory in the container's writable layer"),
)

_READY_MARK: Final = "hostperf-keepalive-ready"
#: PID 1's child (docker-init reaps): runs as root with no capabilities, which still lets it
#: create the layer directory and open up the root-owned volume for the agent's uid; then
#: it only waits. The marker tells start_agent the mounts are ready.
_KEEPALIVE: Final = f"""
import os, signal, sys
os.makedirs({MOUNTS[3].path!r}, exist_ok=True)
for path in ({MOUNTS[1].path!r}, {MOUNTS[3].path!r}):
    os.chmod(path, 0o1777)
print({_READY_MARK!r}, flush=True)
signal.pause()
"""
#: Kills the agent inside the container when it does not leave on stdin EOF; found by the
#: token in its environment (no pkill in a minbase image, and host pids may be foreign).
_KILLER: Final = """
import os, signal, sys
token = ("HOSTPERF_AGENT_TOKEN=" + sys.argv[1]).encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if token in f.read().split(b"\\0"):
                os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""


# --------------------------------------------------------------------------- engine access

def docker_endpoint(environ: Mapping[str, str] | None = None, home: Path | None = None) -> tuple[str, str]:
    """The engine address and where it came from: DOCKER_HOST, else the current context.

    The SDK's ``from_env`` ignores ``docker context use``; the CLI does not, so we read the
    context the CLI would use (DOCKER_CONTEXT, else ``currentContext`` in config.json).
    """
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return environ["DOCKER_HOST"], "DOCKER_HOST"
    config_dir = Path(environ["DOCKER_CONFIG"]) if environ.get("DOCKER_CONFIG") else (home or Path.home()) / ".docker"
    name = environ.get("DOCKER_CONTEXT") or _current_context(config_dir)
    if not name or name == "default":
        return DEFAULT_SOCKET, "default"
    host = _context_host(config_dir, name)
    return (host, f"docker context {name!r}") if host else (DEFAULT_SOCKET, "default")


def _current_context(config_dir: Path) -> str | None:
    try:
        return json.loads((config_dir / "config.json").read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return None


def _context_host(config_dir: Path, name: str) -> str | None:
    meta_dir = config_dir / "contexts" / "meta"
    # The CLI stores each context under sha256(name); scan too in case that ever changes.
    candidates = [meta_dir / hashlib.sha256(name.encode()).hexdigest() / "meta.json", *meta_dir.glob("*/meta.json")]
    for path in candidates:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("Name") == name:
            host = ((meta.get("Endpoints") or {}).get("docker") or {}).get("Host")
            return str(host) if host else None
    return None


def connect(environ: Mapping[str, str] | None = None) -> "docker.DockerClient":
    """A client for the engine the docker CLI would talk to; EnvironmentFailure if none."""
    try:
        import docker
    except ImportError:
        raise EnvironmentFailure(ENV_NAME, "the Python package 'docker' is not installed",
                                 hint="pip install 'docker>=6.1'") from None
    host, source = docker_endpoint(environ)
    try:
        if source == "DOCKER_HOST":  # from_env also honours DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
            client = docker.from_env(version="auto", environment=dict(environ or os.environ))
        else:
            client = docker.DockerClient(base_url=host, version="auto")
        client.ping()
        version = client.version()
    except docker.errors.DockerException as exc:
        raise _connection_failure(host, source, exc) from exc
    _check_api_version(host, version)
    return client


def docker_client() -> "docker.DockerClient":
    """The engine client the CLI and other backends use (DOCKER_HOST, else the context)."""
    return connect()


def _connection_failure(host: str, source: str, exc: Exception) -> EnvironmentFailure:
    text = _exception_chain_text(exc)
    if "PermissionError" in text or "Permission denied" in text:
        return EnvironmentFailure(ENV_NAME, f"permission denied on the Docker socket {host} (from {source})",
                                  hint="add your user to the docker group (sudo usermod -aG docker $USER, "
                                       "then log in again) or use rootless Docker")
    if any(s in text for s in ("FileNotFoundError", "ConnectionRefused", "No such file", "Connection refused",
                               "Connection aborted", "Max retries exceeded")):
        return EnvironmentFailure(ENV_NAME, f"no Docker engine answers at {host} (from {source})",
                                  hint="start it (sudo systemctl start docker, or dockerd &) or set DOCKER_HOST")
    return EnvironmentFailure(ENV_NAME, f"cannot talk to the Docker engine at {host} (from {source}): {exc}",
                              hint="check `docker info` works in this shell")


def _exception_chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 10:
        parts.append(f"{type(seen).__name__}: {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return " | ".join(parts)


def _check_api_version(host: str, version: Mapping[str, Any]) -> None:
    api = str(version.get("ApiVersion", "0.0"))
    parsed = tuple(int(x) for x in re.findall(r"\d+", api)[:2])
    if parsed < MIN_API_VERSION:
        raise EnvironmentFailure(
            ENV_NAME, f"the Docker engine at {host} is too old: version {version.get('Version')} "
                      f"(API {api}), need API {'.'.join(map(str, MIN_API_VERSION))} (Docker 17.06) or newer",
            hint="upgrade the engine (apt-get install docker.io)")


# --------------------------------------------------------------------------- transport

class DockerExecTransport(Transport):
    """The agent's stdin/stdout/stderr over one hijacked ``docker exec`` connection.

    With ``tty=False`` the engine multiplexes the output: each frame has an 8-byte header
    (stream type: 1 stdout, 2 stderr; 3 bytes zero; big-endian payload length). Stdout
    carries the protocol; stderr is the agent's log, kept as a tail for error messages.
    """

    def __init__(self, client: "docker.DockerClient", container_name: str, exec_id: str, sock: Any,
                 token: str, python: str) -> None:
        self._client = client
        self._container_name = container_name
        self._exec_id = exec_id
        self._sock = sock
        self._token = token
        self._python = python
        self._frames = b""
        self._stdout = LineBuffer()
        self._stderr: deque[str] = deque(maxlen=200)
        self._stderr_pending = b""
        self._eof = False
        self._closed = False
        self.owner: Any = None

    # -- Transport

    def send(self, data: bytes) -> None:
        if self._closed:
            raise AgentDied(f"the agent channel to container {self._container_name} is closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AgentDied(self._death_message(f"writing to it failed ({exc})")) from exc

    def read_line(self, deadline: float) -> bytes:
        while True:
            line = self._stdout.pop()
            if line is not None:
                return line
            if self._eof or self._closed:
                raise AgentDied(self._death_message("its output ended"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout(f"the agent in container {self._container_name} sent no complete "
                                   f"protocol line in time")
            self._receive(remaining)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # EOF on the agent's stdin: the agent leaves its request loop by itself.
            self._sock.shutdown(socket.SHUT_WR)
            self._drain(deadline=time.monotonic() + 1.0)
        except OSError:
            pass
        finally:
            self._quiet(self._sock.close)
        if self._exec_running():
            self._kill_inside()

    def log_tail(self) -> str:
        lines = list(self._stderr)
        if self._stderr_pending:
            lines.append(self._stderr_pending.decode(errors="replace"))
        noise = self._stdout.tail_text()
        return "\n".join(lines + ([noise] if noise else []))

    # -- details

    def exec_info(self) -> dict[str, Any]:
        """``docker exec inspect`` of the agent process (Running, ExitCode, Pid)."""
        return dict(self._client.api.exec_inspect(self._exec_id))

    def _receive(self, timeout: float) -> None:
        pending = getattr(self._sock, "pending", None)  # TLS sockets may hold decrypted bytes
        if not (pending and pending()):
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                return
        try:
            data = self._sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return
        self._demux(data)

    def _demux(self, data: bytes) -> None:
        self._frames += data
        while len(self._frames) >= 8:
            stream, length = self._frames[0], struct.unpack(">I", self._frames[4:8])[0]
            if len(self._frames) < 8 + length:
                return
            payload, self._frames = self._frames[8:8 + length], self._frames[8 + length:]
            if stream == 1:
                self._stdout.feed(payload)
            else:
                self._feed_stderr(payload)

    def _feed_stderr(self, payload: bytes) -> None:
        *complete, self._stderr_pending = (self._stderr_pending + payload).split(b"\n")
        self._stderr.extend(line.decode(errors="replace").rstrip("\r") for line in complete)

    def _drain(self, deadline: float) -> None:
        while not self._eof and time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def _exec_running(self) -> bool:
        try:
            return bool(self.exec_info().get("Running"))
        except Exception:  # noqa: BLE001 - container already gone: nothing left to kill
            return False

    def _kill_inside(self) -> None:
        try:
            self._client.api.exec_start(self._client.api.exec_create(
                self._container_name, [self._python, "-c", _KILLER, self._token])["Id"])
        except Exception:  # noqa: BLE001 - stop() removes the container anyway
            pass

    def _exit_code(self) -> int | None:
        # The engine records the exit code a moment after the stream ends.
        for _ in range(50):
            try:
                info = self.exec_info()
            except Exception:  # noqa: BLE001 - container removed: no code to report
                return None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.02)
        return None

    def _death_message(self, what: str) -> str:
        code = self._exit_code()
        status = _container_status(self._client, self._container_name)
        text = f"environment 'docker': the agent in container {self._container_name} died: {what}"
        text += f"; exit code {code}" if code is not None else "; exit code unknown"
        if code is not None and code > 128:
            text += f" (killed by signal {code - 128}{', maybe the OOM killer' if code == 137 else ''})"
        text += f"; container status {status}"
        tail = self.log_tail()
        if tail:
            text += "\n  last output:\n" + "\n".join("    " + line for line in tail.splitlines()[-20:])
        text += (f"\n  hint: run the agent by hand to see why: docker exec -it {self._container_name} "
                 f"{self._python} -m pytest_hostperf.agent --env docker --rootdir {PROJECT_PATH} -- <tests>")
        return text

    @staticmethod
    def _quiet(action: Callable[[], object]) -> None:
        try:
            action()
        except OSError:
            pass


def _container_status(client: "docker.DockerClient", name: str) -> str:
    try:
        return str(client.api.inspect_container(name)["State"]["Status"])
    except Exception:  # noqa: BLE001 - only for an error message
        return "gone"


# --------------------------------------------------------------------------- environment

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

    def __init__(self, session_id: str, project_dir: Path, work_dir: Path, image: str | None = None,
                 network: bool = False, cpus: float | None = None, progress: Progress | None = None,
                 requirements: Sequence[str] = ()) -> None:
        self.session_id = session_id
        self.project_dir = Path(project_dir).resolve()
        self.work_dir = Path(work_dir)
        self.user_image = image
        self.network = network
        self.cpus = cpus
        self.requirements = tuple(requirements)
        self._progress: Progress = progress or (lambda line: None)
        self._client: docker.DockerClient | None = None
        self._image: images.ImageRef | None = None
        self._created = _Session()
        self._describe: dict[str, Any] | None = None
        self._base_name = "hostperf-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", session_id)

    # -- Environment

    def check(self) -> None:
        client = self.client()
        # A session that was SIGKILLed could not clean up: its labelled containers and
        # volumes are removed here, at the start of the next session that uses docker.
        for leftover in sweep_stale(client):
            self._progress(f"hostperf: docker: removed {leftover} left by a killed session")

    def mounts(self) -> Sequence[Mount]:
        return MOUNTS

    def start_agent(self, launch: AgentLaunch) -> DockerExecTransport:
        container = self._container(launch)
        token = os.urandom(8).hex()
        # HOME and USER: the controller's uid has no passwd entry in the image.
        environment = {**launch.environ(), "HOME": "/tmp", "USER": "hostperf", "HOSTPERF_AGENT_TOKEN": token}
        api = self.client().api
        try:
            exec_id = api.exec_create(container.id, launch.argv(), stdin=True, tty=False,
                                      environment=environment, workdir=launch.project_dir,
                                      user=self.agent_user())["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:  # noqa: BLE001 - docker.errors.APIError and transport errors alike
            raise EnvironmentFailure(ENV_NAME, f"could not start the agent in container {container.name}: {exc}",
                                     hint="check the image has the interpreter " + repr(launch.python),
                                     log_tail=_container_logs(container)) from exc
        transport = DockerExecTransport(self.client(), container.name, exec_id,
                                        getattr(sock, "_sock", sock), token, launch.python)
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
            self._describe = {
                "engine": _classify_engine(info, version),
                "api_version": version.get("ApiVersion"),
                "image": self._image.tag if self._image else self.user_image,
                "image_id": self._image.id if self._image else None,
                "nano_cpus": _nano_cpus(self.cpus),
                "network": self.network,
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

    def client(self) -> "docker.DockerClient":
        """The engine client (connects and checks on first use)."""
        if self._client is None:
            self._client = connect()
        return self._client

    def image(self) -> images.ImageRef:
        """The image the agent runs in, built or found in the cache on first use."""
        if self._image is None:
            try:
                self._image = images.ensure_image(self.client(), self.project_dir, self.user_image,
                                                  self.requirements, self._progress)
            except images.ImageBuildError as exc:
                raise EnvironmentFailure(ENV_NAME, str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - docker.errors.* from the engine while building
                raise EnvironmentFailure(ENV_NAME, f"preparing the image failed: {exc}",
                                         hint="run `hostperf image build` to see the whole build") from exc
        return self._image

    def launch(self, test_files: Sequence[str], pytest_args: Sequence[str] = ()) -> AgentLaunch:
        """The agent launch in this environment's paths (interpreter from the image)."""
        return AgentLaunch(python=self.image().python, pythonpath=AGENT_PARENT, project_dir=PROJECT_PATH,
                           test_files=tuple(test_files), pytest_args=tuple(pytest_args), env=ENV_NAME)

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

    def __enter__(self) -> "DockerEnvironment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- container

    def _labels(self) -> dict[str, str]:
        return {sweep_label(): self.session_id, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()}

    def _container(self, launch: AgentLaunch) -> Any:
        if self._created.container is not None:
            return self._created.container
        ref = self.image()
        client = self.client()
        labels = self._labels()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._created.bind_dir = Path(tempfile.mkdtemp(prefix=BIND_PREFIX, dir=self.work_dir))
        self._created.volume = client.volumes.create(self._base_name + "-volume", labels=labels).name
        labels[LABEL_BIND_DIR] = str(self._created.bind_dir)
        try:
            container = client.containers.create(
                ref.tag, [ref.python if ref.kind == "project" else launch.python, "-c", _KEEPALIVE],
                name=self._base_name, labels=labels, init=True, detach=True,
                mounts=self._docker_mounts(launch), working_dir=launch.project_dir,
                network_mode=None if self.network else "none",
                cap_drop=["ALL"], security_opt=["no-new-privileges"],
                nano_cpus=_nano_cpus(self.cpus))
            self._created.container = container
            container.start()
        except Exception as exc:  # noqa: BLE001 - any API failure becomes an EnvironmentFailure
            raise EnvironmentFailure(ENV_NAME, f"could not create/start container {self._base_name} from "
                                     f"{ref.tag}: {exc}", hint="see `docker info` and the engine's log") from exc
        self._wait_keepalive(container)
        return container

    def _docker_mounts(self, launch: AgentLaunch) -> list[Any]:
        from docker.types import Mount as DockerMount

        # Only the package directory is shipped: its parent may be a whole site-packages.
        package = package_parent() / "pytest_hostperf"
        return [
            DockerMount(launch.project_dir, str(self.project_dir), type="bind", read_only=True),
            DockerMount(f"{launch.pythonpath}/pytest_hostperf", str(package), type="bind", read_only=True),
            DockerMount(MOUNTS[0].path, str(self._created.bind_dir), type="bind"),
            DockerMount(MOUNTS[1].path, self._created.volume, type="volume"),
            DockerMount(MOUNTS[2].path, None, type="tmpfs", tmpfs_mode=0o1777),
        ]

    def _wait_keepalive(self, container: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _READY_MARK.encode() in container.logs():
                return
            container.reload()
            if container.status not in ("created", "running"):
                break
            time.sleep(0.01)
        raise EnvironmentFailure(
            ENV_NAME, f"container {container.name} did not get ready (status {container.status})",
            hint="the image needs a python3 for the keep-alive process; "
                 "a user image must provide python3 with pytest and pytest-benchmark",
            log_tail=_container_logs(container))


# --------------------------------------------------------------------------- sweeping

def sweep_stale(client: "docker.DockerClient") -> list[str]:
    """Remove containers/volumes of sessions whose controller process is gone.

    Called at session start, so a SIGKILLed run is cleaned by the next one. Cached images
    are kept on purpose (they are the cache); leftovers of killed builds are removed.
    """
    removed: list[str] = []
    host = socket.gethostname()
    label_filter = {"label": sweep_label()}
    for container in client.containers.list(all=True, filters=label_filter):
        if _is_stale(container.labels, host):
            _quietly(functools.partial(container.remove, force=True))
            removed.append(f"container {container.name}")
            _remove_bind_dir(container.labels.get(LABEL_BIND_DIR, ""))
    for volume in client.volumes.list(filters=label_filter):
        if _is_stale(volume.attrs.get("Labels") or {}, host):
            _quietly(functools.partial(volume.remove, force=True))
            removed.append(f"volume {volume.name}")
    removed += images.sweep_build_leftovers(client, session_alive)
    return removed


def _is_stale(labels: Mapping[str, str], host: str) -> bool:
    pid = labels.get(LABEL_PID, "")
    # A pid only means something on the machine that wrote it (engines can be shared).
    return labels.get(LABEL_HOST, host) == host and pid.isdigit() and not session_alive(int(pid))



def _remove_bind_dir(path: str) -> None:
    # Only directories we made (by name); a label could have been edited by hand.
    if path and Path(path).name.startswith(BIND_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- helpers

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
        return container.logs(tail=40).decode(errors="replace")
    except Exception:  # noqa: BLE001 - only for an error message
        return ""


def _classify_engine(info: Mapping[str, Any], version: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from pytest_hostperf.fingerprint import classify_engine

        return dict(classify_engine(info, version))
    except Exception:  # noqa: BLE001 - a fingerprint bug (or absence) must not break the environment
        pass
    keys = ("OperatingSystem", "Name", "KernelVersion", "ServerVersion", "Driver", "SecurityOptions",
            "CgroupVersion", "NCPU", "MemTotal")
    return {key: info.get(key) for key in keys}


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - cleanup is best effort and must never raise
        pass
