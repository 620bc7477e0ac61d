"""The docker environment: the agent in a warm container of the project image.

* :mod:`.engine`: which engine (DOCKER_HOST, the CLI's context), connecting, its kind;
* :mod:`.transport`: the agent's stdin/stdout over one ``docker exec`` socket;
* :mod:`.environment`: :class:`DockerEnvironment`, the container and its mounts;
* :mod:`.sweep`: removing what killed sessions left.
"""

from __future__ import annotations

from pytest_hostperf.environments.docker.engine import (
    DEFAULT_SOCKET,
    ENV_NAME,
    MIN_API_VERSION,
    check_api_version,
    connect,
    docker_client,
    docker_endpoint,
)
from pytest_hostperf.environments.docker.environment import MOUNTS, DockerEnvironment
from pytest_hostperf.environments.docker.sweep import BIND_PREFIX, sweep_stale
from pytest_hostperf.environments.docker.transport import AGENT_PARENT, PROJECT_PATH, DockerExecTransport

__all__ = [
    "AGENT_PARENT", "BIND_PREFIX", "DEFAULT_SOCKET", "ENV_NAME", "MIN_API_VERSION", "MOUNTS", "PROJECT_PATH",
    "DockerEnvironment", "DockerExecTransport", "check_api_version", "connect", "docker_client",
    "docker_endpoint", "sweep_stale",
]
