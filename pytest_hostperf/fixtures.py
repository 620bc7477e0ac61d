"""The fixtures a benchmark body uses: ``hostperf_dir`` and ``hostperf_env``.

They are registered by the plugin on the host and by the agent inside environments
(where the package is shipped, not installed). Outside a hostperf agent they still work,
so a test that uses them runs under plain ``pytest`` too.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest


@dataclasses.dataclass(frozen=True)
class HostperfEnv:
    """Where the current test body runs."""

    name: str                 # "native", "docker", "qemu", "ssh:HOST", or "local" outside hostperf
    mount: str                # mount under test: "host", "bind", "volume", "tmpfs", "layer", ...
    mount_path: str | None    # directory the mount lives at, inside the environment
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def in_container(self) -> bool:
        return self.fingerprint.get("env_kind") in ("container", "container-in-vm")

    @property
    def in_vm(self) -> bool:
        return self.fingerprint.get("env_kind") in ("vm", "container-in-vm")


#: Set by the agent before each run; absent when the test runs under plain pytest.
CURRENT_ENV_KEY = pytest.StashKey[HostperfEnv]()

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_FRESH = itertools.count()


@pytest.fixture
def hostperf_env(request: pytest.FixtureRequest) -> HostperfEnv:
    """What environment (and mount) this test body is running in."""
    return request.config.stash.get(CURRENT_ENV_KEY, None) or HostperfEnv("local", "host", None)


@pytest.fixture
def hostperf_dir(request: pytest.FixtureRequest, hostperf_env: HostperfEnv) -> Iterator[Path]:
    """A fresh writable directory on the mount under test, removed after the test.

    Under plain pytest it is a subdirectory of ``tmp_path``.
    """
    if hostperf_env.mount_path is None:
        # Asked for only here: in an agent it would leave a pytest-of-<user> tree in the
        # environment's temp dir (on an ssh target, for good) for a directory never used.
        path = request.getfixturevalue("tmp_path") / "hostperf"
        path.mkdir()
        yield path
        return
    name = _UNSAFE.sub("_", request.node.name)[:80]
    # A fresh name each time: on NFS a directory whose file is still open elsewhere (the
    # client's .nfsXXXX "silly rename") cannot be removed, so the next block of the same
    # item would find it and fail with EEXIST (seen on docker@qemu-bind-nfs under TCG).
    path = Path(hostperf_env.mount_path) / f"{name}-{os.getpid()}-{next(_FRESH)}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hostperf(envs=None, mounts=None, max_overhead=None, tolerance=None): "
        "narrow or tune how pytest-hostperf runs and judges this benchmark",
    )
