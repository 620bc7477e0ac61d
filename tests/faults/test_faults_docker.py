"""Faults of the Docker engine: the engine killed mid-session.

(The container killed mid-test, ``docker kill``, shares the session of the hostile test
bodies to save a session: tests/faults/test_faults_hostile.py.)

The engine that is killed is a private dockerd started for the test (its own data root,
containerd, socket), never the machine's shared engine; the session is pointed at it
with ``DOCKER_HOST``.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
from faultkit import BaselineSnapshot, FaultProject, expect, leftovers
from private_dockerd import PrivateDockerd, dockerd_available

from pytest_hostperf import images

pytestmark = [pytest.mark.faults, pytest.mark.docker]

#: Closes the gate on overhead: the subject is the fault, not this shared machine's speed.
DOCKER = ("--hostperf-envs=native,docker", "--hostperf-require=docker", "--hostperf-max-overhead=docker=1000")

THREE_TESTS = """
import time

def test_a(benchmark):
    benchmark(time.sleep, 0.002)

def test_b(benchmark):
    benchmark(time.sleep, 0.002)

def test_c(benchmark, hostperf_dir):
    benchmark(time.sleep, 0.002)
"""

KILL_DOCKERD_AFTER_A = """
import os
import signal

def pytest_runtest_logreport(report):
    # In the controller, when asked: SIGKILL the private dockerd once test_a[docker] is done.
    pid = os.environ.get("FAULT_KILL_DOCKERD")
    if pid and report.when == "call" and report.nodeid.endswith("test_a[docker]"):
        os.kill(int(pid), signal.SIGKILL)
"""


@pytest.fixture
def private_dockerd(engine: Any) -> Iterator[PrivateDockerd]:
    problem = dockerd_available()
    if problem:
        if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
            pytest.fail(f"HOSTPERF_REQUIRE_DOCKER is set but {problem}")
        pytest.skip(problem)
    dockerd = PrivateDockerd()
    try:
        dockerd.start()
        yield dockerd
    finally:
        dockerd.stop()


def test_dockerd_killed_mid_session(project: FaultProject, engine: Any, private_dockerd: PrivateDockerd) -> None:
    """The engine dies after the first docker item: the rest fail fast and name it; nothing is lost."""
    project.write("conftest.py", KILL_DOCKERD_AFTER_A)
    project.write("test_k.py", THREE_TESTS)
    ref = images.ensure_image(engine, project.path)   # present on the shared engine: found, not built
    private_dockerd.load_images(engine, [images.BASE_TAG, ref.tag])
    on_private = {"DOCKER_HOST": private_dockerd.url}
    assert project.run(*DOCKER, "--hostperf-save", env=on_private).ret == 0
    before = BaselineSnapshot.take(project.baselines)

    result = project.run(*DOCKER, "--hostperf-save", env={**on_private, "FAULT_KILL_DOCKERD": str(private_dockerd.pid)})

    assert result.ret == 1, result.output
    docker_c = [f"test_c[docker-{mount}]" for mount in ("bind", "volume", "tmpfs", "layer")]
    expect(result, {"test_a[native]": "PASSED", "test_a[docker]": "PASSED", "test_b[native]": "PASSED",
                    "test_c[native]": "PASSED", "test_b[docker]": "FAILED", **dict.fromkeys(docker_c, "ERROR")})
    died = result.failure_text("test_b[docker]")
    assert f"the Docker engine at {private_dockerd.url} stopped answering" in died, died
    assert "check the engine (docker info, its log)" in died, died
    for item in docker_c:   # the engine is gone: said at once, with the address and the fix
        text = result.failure_text(item)
        assert f"no Docker engine answers at {private_dockerd.url} (from DOCKER_HOST)" in text, text
        assert "hint: start it" in text, text
    assert before.lost() == []   # native and test_a[docker] were saved beside the old sessions

    # A killed engine keeps what it ran; once it is back, the next session removes it.
    private_dockerd.start()
    after = project.run(*DOCKER, "-k", "test_a", env=on_private)
    assert after.ret == 0, after.output
    assert "left by a killed session" in after.output
    assert leftovers(project, engines=[engine, private_dockerd.client()]) == []
