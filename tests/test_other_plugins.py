"""--hostperf beside the options and plugins real projects use (issue #9), through the native agent.

The body runs in the agent, a pytest session of its own: what the invocation asks for
(a conftest's option, -W, PYTEST_ADDOPTS, pytest-timeout's limit, the ini file pytest
found) must hold there as in a plain run. Each case failed before: the agent measured
the conftest option's default, ignored -W, an alarm of pytest-timeout ended the session
in an INTERNALERROR, --pyargs crashed the collection hook. pytest-randomly and
pytest-xdist themselves are exercised in tests/test_agent_strict.py (they are not
installed in this interpreter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sessions import run

pytest_plugins = ["pytester"]

SIZE_CONFTEST = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--size", type=int, default=10, help="work size for the benchmarks")

@pytest.fixture
def size(request):
    return request.config.getoption("size")
"""
SIZED = """
import warnings

def test_size(benchmark, size):
    assert size == 77, f"the body saw --size={size}"
    benchmark(sum, range(size))

def test_warns(benchmark):
    warnings.warn("deprecated thing", UserWarning)
    benchmark(sum, range(10))
"""


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    return {r["test"].split("::")[-1]: (r["outcome"], r["reason"]) for r in json.loads(report.read_text())["results"]}


@pytest.fixture
def sized(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(SIZE_CONFTEST)
    pytester.makepyfile(test_sized=SIZED)
    return pytester


def test_a_conftest_option_from_pytest_addopts_and_warning_filters_reach_the_body(
        sized: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # One session for both sources of options (CI time): the conftest's option comes from
    # PYTEST_ADDOPTS, the warning filter from the command line.
    monkeypatch.setenv("PYTEST_ADDOPTS", "--size=77")
    report = sized.path / "r.json"
    result = run(sized, "--hostperf", "-W", "error::UserWarning", f"--hostperf-json={report}")
    assert outcomes(report)["test_size"][0] == "passed", result.stdout.str()
    outcome, reason = outcomes(report)["test_warns"]
    assert outcome == "failed" and "UserWarning: deprecated thing" in result.stdout.str(), (outcome, reason)


def test_the_ini_file_pytest_found_applies_in_the_agent(pytester: pytest.Pytester) -> None:
    pytester.makefile(".cfg", setup="[tool:pytest]\nfilterwarnings = error::UserWarning\n")
    pytester.makeconftest(SIZE_CONFTEST)
    pytester.makepyfile(test_sized=SIZED)
    report = pytester.path / "r.json"
    run(pytester, "--hostperf", "--size=77", f"--hostperf-json={report}")
    assert outcomes(report)["test_warns"][0] == "failed"
    assert outcomes(report)["test_size"][0] == "passed"


TIMED = """
import time

def test_slowish(benchmark):
    benchmark.pedantic(time.sleep, args=(0.3,), rounds=4, iterations=1)

def test_too_slow(benchmark):
    benchmark.pedantic(time.sleep, args=(2.5,), rounds=1, iterations=1)
"""


def test_pytest_timeout_limits_the_body_inside_not_the_controllers_wait(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_timed=TIMED)
    report = pytester.path / "r.json"
    # The item waits for the agent's start-up (~2 s) and measures 1.2 s: over 1.5 s in the
    # controller, where pytest-timeout's alarm used to end the session in an INTERNALERROR.
    result = run(pytester, "--hostperf", "--timeout=1.5", f"--hostperf-json={report}")
    text = result.stdout.str()
    assert "INTERNALERROR" not in text, text
    assert outcomes(report)["test_slowish"][0] == "passed", text
    outcome, _ = outcomes(report)["test_too_slow"]
    assert outcome == "failed" and "Timeout" in text, text


def test_pyargs_of_an_installed_package_runs_natively_and_is_refused_elsewhere(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path_factory.mktemp("site")
    package = site / "pyargs_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "test_bench.py").write_text("def test_sum(benchmark):\n    benchmark(sum, range(100))\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{':'.join(sys.path)}")
    report = pytester.path / "r.json"
    native = run(pytester, "--hostperf", "--pyargs", "pyargs_demo", f"--hostperf-json={report}")
    assert native.ret == 0, native.stdout.str()
    assert [outcome for outcome, _ in outcomes(report).values()] == ["passed"]
    docker = run(pytester, "--hostperf", "--hostperf-envs=native,docker", "--pyargs", "pyargs_demo")
    assert docker.ret == pytest.ExitCode.USAGE_ERROR
    docker.stderr.fnmatch_lines(["*test_bench.py is outside the rootdir*so docker cannot see it*checkout*"])


def test_parallel_workers_are_a_usage_error(pytester: pytest.Pytester) -> None:
    # pytest-xdist's options (a conftest may not declare -n: xdist itself is in test_agent_strict.py).
    pytester.makeconftest("def pytest_addoption(parser):\n"
                          "    parser.addoption('--numprocesses', dest='numprocesses', type=int, default=None)\n"
                          "    parser.addoption('--dist', dest='dist', default='no')\n")
    pytester.makepyfile(test_x="def test_x(benchmark):\n    benchmark(sum, range(10))\n")
    result = run(pytester, "--hostperf", "--numprocesses", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hostperf measures one test at a time; -n 2 (pytest-xdist)*drop it, or pass -n 0*"])
    assert run(pytester, "--hostperf", "--numprocesses", "0").ret == 0
