"""Another package adds an environment kind through the hooks (pytest_hostperf_make_environment)."""

from __future__ import annotations

import pytest
from sessions import FAST

pytest_plugins = ["pytester"]


# A "podman-machine"-like backend living in a conftest: here it runs the agent as a local
# subprocess (the native backend's way) under its own name, with mounts of its own.
PLUGIN = """
from pytest_hostperf.environments.base import Mount
from pytest_hostperf.environments.native import NativeEnvironment
from pytest_hostperf.options import EnvironmentKind

MADE = []


class PodmanMachine(NativeEnvironment):
    name = "podman-machine"

    def mounts(self):
        return (Mount("vol", str(self.work_dir / "podman-vol")), Mount("bind", str(self.work_dir / "podman-bind")))

    def describe(self):
        return {"engine": "fake podman machine"}


def pytest_hostperf_environment_kinds():
    return [EnvironmentKind("podman-machine", ("vol", "bind")), EnvironmentKind("declared-only", ("disk",))]


def pytest_hostperf_make_environment(name, context):
    if name == "podman-machine":
        MADE.append(context.session_id)
        return PodmanMachine(context.work_dir)
    return None
"""

BODY = """
import time

def test_plain(benchmark):
    benchmark(time.sleep, 0.001)

def test_dir(benchmark, hostperf_dir, hostperf_env):
    assert hostperf_env.name == "podman-machine" or hostperf_env.name == "native"
    (hostperf_dir / "f").write_text("x")
    assert str(hostperf_dir).startswith(str(hostperf_env.mount_path))
    benchmark(time.sleep, 0.001)
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(PLUGIN)
    pytester.makepyfile(test_k=BODY)
    return pytester


def test_a_plugin_adds_an_environment_kind(project: pytest.Pytester) -> None:
    report = project.path / "r.json"
    result = project.runpytest_subprocess(*FAST, "--hostperf", "-v", "--hostperf-envs=native,podman-machine",
                                          "--hostperf-max-overhead=podman-machine-vol=50", f"--hostperf-json={report}",
                                          timeout=180)
    result.stdout.fnmatch_lines(["*test_plain?native? PASSED*", "*test_plain?podman-machine? PASSED*",
                                 "*test_dir?native? PASSED*", "*test_dir?podman-machine-vol? PASSED*",
                                 "*test_dir?podman-machine-bind? PASSED*"])
    assert result.ret == 0
    assert "hostperf: podman-machine ready in" in result.stdout.str()
    import json

    records = {r["item"]: r for r in json.loads(report.read_text())["results"]}
    plugin = records["test_k.py::test_dir[podman-machine-vol]"]
    assert plugin["env"] == "podman-machine" and plugin["mount"] == "vol"
    assert plugin["fingerprint"]["outside"] == {"engine": "fake podman machine"}
    assert plugin["ratio_to_native"] is not None


def test_a_declared_kind_nobody_makes_is_skipped_with_the_reason(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(*FAST, "--hostperf", "-rs", "--hostperf-envs=declared-only",
                                          "test_k.py::test_plain", timeout=180)
    result.stdout.fnmatch_lines(["*SKIPPED*environment 'declared-only': no installed plugin makes this kind*"])
    assert result.ret == 0


@pytest.mark.parametrize("envs", ["native,vmware", "podman"])
def test_an_unknown_kind_is_still_a_usage_error_listing_the_plugins_kinds(project: pytest.Pytester, envs: str) -> None:
    result = project.runpytest_subprocess(*FAST, "--hostperf", f"--hostperf-envs={envs}", timeout=180)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown environment*native, docker, qemu, docker@qemu, ssh:HOST, podman-machine or "
                                 "declared-only*"])


def test_a_kind_declared_twice_differently_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(other_plugin="""
from pytest_hostperf.options import EnvironmentKind

def pytest_hostperf_environment_kinds():
    return [EnvironmentKind("docker", ("other",))]
""")
    result = project.runpytest_subprocess(*FAST, "--hostperf", "-p", "other_plugin", timeout=180)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*environment kind 'docker' is declared twice, differently*"])
