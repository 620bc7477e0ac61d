"""The agent in strict projects (issue #9): it starts under ``filterwarnings = error`` with
the plugin installed, leaks nothing at exit under ``-X dev -W error``, and an
``addopts = -n 2`` in the project's ini does not hand its collection to xdist workers."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_hostperf.agent.channel import AgentChannel
from pytest_hostperf.environments.base import AgentClient, AgentLaunch, package_parent
from pytest_hostperf.environments.pipe import PipeTransport, spawn_piped

TEST_FILE = """
def test_sum(benchmark):
    assert benchmark(sum, range(100)) == 4950
"""
RUN = {"op": "run", "nodeid": "test_strict.py::test_sum", "mount": "", "mount_path": None,
       "benchmark_options": {"max_time": 0.02, "min_rounds": 3, "warmup": False}}


def project(path: Path, ini: str) -> Path:
    (path / "pytest.ini").write_text(ini)
    (path / "test_strict.py").write_text(TEST_FILE)
    return path


def run_agent(project_dir: Path, python: list[str]) -> tuple[dict[str, Any], dict[str, Any], int | None, str]:
    """Start the agent, run test_sum once, shut it down: (ready, result, exit code, log tail)."""
    launch = AgentLaunch(python[0], str(package_parent()), str(project_dir), ("test_strict.py",),
                         ("-c", "pytest.ini"), "native")
    env = {**os.environ, **launch.environ()}
    transport = PipeTransport(spawn_piped([*python, *launch.argv()[1:]], env, cwd=str(project_dir)))
    client = AgentClient("native", transport)
    try:
        hello = client.wait_ready(120)
        result = client.request(dict(RUN), "result", 120, "running test_sum")
        client.request({"op": "shutdown"}, "bye", 30, "shutting down")
        transport.process.wait(timeout=60)  # leaves by itself after "bye"
        transport._drain.join(timeout=10)   # its last stderr lines (warnings at exit) are in the tail
    finally:
        transport.close()
    return hello, result, transport.process.returncode, transport.log_tail()


def installed_as_plugin() -> bool:
    return any(ep.name == "hostperf" for ep in importlib.metadata.entry_points(group="pytest11"))


@pytest.mark.skipif(not installed_as_plugin(), reason="pytest-hostperf is not installed (no pytest11 entry point)")
def test_the_agent_starts_under_filterwarnings_error_with_the_plugin_installed(tmp_path: Path) -> None:
    # The installed plugin's package is marked for assertion rewriting, but the agent has
    # imported it already: without PYTEST_DONT_REWRITE, pytest's warning is an error here.
    hello, result, _, tail = run_agent(project(tmp_path, "[pytest]\nfilterwarnings = error\n"), [sys.executable])
    assert hello["collected"] == ["test_strict.py::test_sum"], tail
    assert result["outcome"] == "passed", tail
    assert "PytestAssertRewriteWarning" not in tail


def test_what_a_conftest_imports_is_the_tests_code_not_the_harness(tmp_path: Path) -> None:
    """pytest and its plugins are left out of the comparison with native; a dependency the
    project's conftest imports is not (it is loaded before collection starts)."""
    (project(tmp_path, "[pytest]\n") / "conftest.py").write_text("import packaging.version\n")
    hello, _, _, tail = run_agent(tmp_path, [sys.executable])
    modules = hello["modules"]
    assert modules["packaging"]["harness"] is False, tail
    assert modules["packaging"]["version"] == importlib.metadata.version("packaging")
    assert modules["_pytest"]["harness"] is True and modules["conftest"]["origin"] == "project"


def test_the_agents_channel_closes_both_ends_once() -> None:
    read_fd, write_fd = os.pipe()
    channel = AgentChannel(os.fdopen(read_fd, "rb", buffering=0), os.fdopen(write_fd, "wb", buffering=0))
    channel.close()
    channel.close()  # idempotent: the agent's finally closes it after a fatal error too
    for fd in (read_fd, write_fd):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_the_agent_leaks_nothing_at_exit_under_dev_mode_and_warnings_as_errors(tmp_path: Path) -> None:
    # With pytest 9.2 an unclosed channel file shows here at exit; pytest 9.0 keeps the
    # agent's plugin (and its channel) alive until interpreter finalization, which
    # emits no warning: the test above checks the channel itself.
    _, result, code, tail = run_agent(project(tmp_path, "[pytest]\nfilterwarnings = error\n"),
                                      [sys.executable, "-X", "dev", "-W", "error"])
    assert result["outcome"] == "passed", tail
    assert code == 0, tail
    assert "ResourceWarning" not in tail and "Exception ignored" not in tail, tail


@pytest.fixture(scope="module")
def plugins_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with this one's packages plus pytest-xdist and pytest-randomly."""
    venv = tmp_path_factory.mktemp("plugins") / "venv"
    # No pip of its own (ensurepip is most of a venv's cost): the host's pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "pytest-xdist", "pytest-randomly"], check=True)
    return venv / "bin/python"


@pytest.mark.slow
def test_addopts_with_xdist_workers_does_not_take_over_the_agent(plugins_python: Path, tmp_path: Path) -> None:
    hello, result, _, tail = run_agent(project(tmp_path, "[pytest]\naddopts = -n 2\n"), [str(plugins_python)])
    assert hello["collected"] == ["test_strict.py::test_sum"], tail
    assert result["outcome"] == "passed", tail


@pytest.mark.slow
def test_xdist_workers_with_hostperf_are_a_usage_error(plugins_python: Path, tmp_path: Path) -> None:
    project(tmp_path, "[pytest]\n")
    done = subprocess.run([str(plugins_python), "-m", "pytest", "-p", "no:cacheprovider", "--hostperf", "-n", "2"],
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "--hostperf measures one test at a time; -n 2 (pytest-xdist)" in done.stderr
    assert "test_sum" not in done.stdout  # nothing ran, nothing measured in parallel


RANDOM_BODY = """
import os, random
from pathlib import Path

def test_random(benchmark):
    Path(os.environ["RANDOM_OUT"], f"{os.environ.get('HOSTPERF_AGENT', 'plain')}-{os.getpid()}").write_text(
        repr(random.random()))
    benchmark(sum, range(100))
"""


@pytest.mark.slow
def test_pytest_randomlys_seed_reaches_the_agent(plugins_python: Path, tmp_path: Path) -> None:
    """The body sees the random numbers a plain run with the same seed sees (randomly reseeds
    ``random`` before each test); the agent otherwise runs with ``-p no:randomly``."""
    work, out = tmp_path / "project", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "pytest.ini").write_text("[pytest]\n")
    (work / "test_random.py").write_text(RANDOM_BODY)
    env = {**os.environ, "RANDOM_OUT": str(out)}
    for extra in ([], ["--hostperf"]):
        done = subprocess.run([str(plugins_python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "randomly",
                               "--randomly-seed=123", *extra], cwd=work, env=env, capture_output=True, text=True,
                              check=False, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    seen = {path.name.split("-")[0]: path.read_text() for path in out.iterdir()}
    assert set(seen) == {"plain", "native"}, seen
    assert seen["native"] == seen["plain"], seen
