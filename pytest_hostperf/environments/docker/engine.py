"""Reaching the Docker engine the CLI would use, and telling what kind of engine it is."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Mapping

from pytest_hostperf.environments.base import EnvironmentFailure

if TYPE_CHECKING:
    import docker

ENV_NAME: Final = "docker"
DEFAULT_SOCKET: Final = "unix:///var/run/docker.sock"
#: Docker 17.06: mounts of type tmpfs, init and nano_cpus all exist from here on.
MIN_API_VERSION: Final = (1, 30)


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
        name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


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


def connect(environ: Mapping[str, str] | None = None) -> docker.DockerClient:
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
    check_api_version(host, version)
    return client


def unreachable(exc: Exception, environ: Mapping[str, str] | None = None) -> EnvironmentFailure:
    """The failure to report when an engine that answered before stops answering."""
    host, source = docker_endpoint(environ)
    return _connection_failure(host, source, exc)


def docker_client() -> docker.DockerClient:
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


def check_api_version(host: str, version: Mapping[str, Any]) -> None:
    """EnvironmentFailure when the engine is older than :data:`MIN_API_VERSION`."""
    api = str(version.get("ApiVersion", "0.0"))
    parsed = tuple(int(x) for x in re.findall(r"\d+", api)[:2])
    if parsed < MIN_API_VERSION:
        raise EnvironmentFailure(
            ENV_NAME, f"the Docker engine at {host} is too old: version {version.get('Version')} "
                      f"(API {api}), need API {'.'.join(map(str, MIN_API_VERSION))} (Docker 17.06) or newer",
            hint="upgrade the engine (apt-get install docker.io)")


def classify(info: Mapping[str, Any], version: Mapping[str, Any]) -> dict[str, Any]:
    """What kind of engine this is (Docker Desktop, rootless, Podman...): see the fingerprint."""
    try:
        from pytest_hostperf.fingerprint import classify_engine

        return dict(classify_engine(info, version))
    except Exception:  # noqa: BLE001 - a fingerprint bug (or absence) must not break the environment
        pass
    keys = ("OperatingSystem", "Name", "KernelVersion", "ServerVersion", "Driver", "SecurityOptions",
            "CgroupVersion", "NCPU", "MemTotal")
    return {key: info.get(key) for key in keys}
