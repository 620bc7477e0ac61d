"""The gate is never off by accident and saves nothing it should not (issue #8), end to end.

Real pytest sessions (pytester subprocesses) with the real native agent; bodies sleep, so
their timings are stable enough to gate on (see tests/test_plugin.py).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from sessions import SLEEPY, run

pytest_plugins = ["pytester"]

SLEEPY = SLEEPY + """
def test_steady(benchmark):
    benchmark(time.sleep, 0.002)
"""


@pytest.fixture
def sleepy(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(test_sleepy=SLEEPY)
    (pytester.path / "delay.txt").write_text("0.002")
    # A private TMPDIR: the session's work dir must be gone from it afterwards.
    (pytester.path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(pytester.path / "tmp"))
    return pytester


def baseline(pytester: pytest.Pytester) -> Path:
    (path,) = (pytester.path / "baselines").glob("native-*.json")
    return path


def sessions(path: Path, test: str) -> list[dict]:
    return json.loads(path.read_text())["benchmarks"][f"test_sleepy.py::{test}"]["-"]


def work_dirs(pytester: pytest.Pytester) -> list[str]:
    return [p.name for p in (pytester.path / "tmp").glob("hostperf-*")]


# -- 1. what a save keeps ------------------------------------------------------------------------

def test_a_regression_is_never_saved_unless_accepted_with_a_reason(sleepy: pytest.Pytester) -> None:
    for _ in range(3):
        assert run(sleepy, "--hostperf", "--hostperf-save").ret == 0
    path = baseline(sleepy)
    (sleepy.path / "delay.txt").write_text("0.010")  # 5x: beyond any slow moment of this (shared) machine

    refused = run(sleepy, "--hostperf", "--hostperf-save", "--hostperf-confirm=0")
    assert refused.ret == 1
    refused.stdout.fnmatch_lines(["*1 failing item(s) not saved*test_sleepy.py::test_sleepy[[]native[]]*"
                                  "--hostperf-accept=GLOB*",
                                  "*FAILED test_sleepy.py::test_sleepy[[]native[]] - hostperf regression*"])
    assert len(sessions(path, "test_sleepy")) == 3 and len(sessions(path, "test_steady")) == 4

    accepted = run(sleepy, "--hostperf", "--hostperf-save", "--hostperf-confirm=0",
                   "--hostperf-accept=*::test_sleepy*", "--hostperf-accept-reason=slower on purpose (#8)")
    assert accepted.ret == 0, accepted.stdout.str()
    accepted.stdout.fnmatch_lines(["*test_sleepy*native*regression (accepted)*"])
    saved = sessions(path, "test_sleepy")
    assert len(saved) == 4
    assert saved[-1]["context"]["accepted"] == {"reason": "slower on purpose (#8)", "verdict": "regression"}
    assert work_dirs(sleepy) == []


def test_a_session_stopped_by_maxfail_saves_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="""
import time

def test_a_broken(benchmark):
    assert False, "broken"

def test_b_fine(benchmark):
    benchmark(time.sleep, 0.001)
""")
    result = run(pytester, "--hostperf", "--hostperf-save", "-x")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*baselines NOT saved: the session did not run to its end*"])
    assert not (pytester.path / "baselines").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_session_stopped_by_a_signal_saves_nothing_and_cleans_up(sleepy: pytest.Pytester, signum: int) -> None:
    # The second test signals the controller (the agent's parent) while it is being measured.
    sleepy.makepyfile(test_sleepy=SLEEPY + f"""
def test_stop(benchmark):
    import os
    os.kill(os.getppid(), {int(signum)})
    benchmark(time.sleep, 0.002)

def test_zlast(benchmark):
    benchmark(time.sleep, 0.002)
""")
    result = run(sleepy, "--hostperf", "--hostperf-save")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert not (sleepy.path / "baselines").exists()
    assert "test_zlast" not in result.stdout.str().split("= hostperf =")[-1]
    assert work_dirs(sleepy) == []


# -- 2. an unreadable baseline fails the run; a missing one is counted --------------------------

def test_items_without_a_baseline_are_counted_and_strict_fails_them(sleepy: pytest.Pytester) -> None:
    lenient = run(sleepy, "--hostperf")
    assert lenient.ret == 0
    lenient.stdout.fnmatch_lines(["NOT GATED: 2 of 2 items have no baseline: native: nothing saved for fingerprint *"])
    strict = run(sleepy, "--hostperf", "--hostperf-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["hostperf no-baseline [[]native[]] (--hostperf-strict): no baseline: *",
                                 "NOT GATED: 2 of 2 items have no baseline (--hostperf-strict: these fail)*"])
    sleepy.makeini("[pytest]\nhostperf_strict = true\n")
    assert run(sleepy, "--hostperf").ret == 1
    assert run(sleepy, "--hostperf", "--hostperf-save").ret == 1  # saved, but still not gated this time
    assert run(sleepy, "--hostperf").ret == 0


# -- 2 and 5. damaged baselines and failed saves: tests/faults/test_faults_baselines.py ------------


# -- 6. a malformed agent answer fails one item ---------------------------------------------------

def test_a_malformed_agent_answer_fails_one_item_not_the_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
import os

from pathlib import Path

if os.environ.get("HOSTPERF_AGENT"):
    # Inside the agent: the session's first measurement comes back as NaN timings.
    import pytest_hostperf.agent.worker as worker

    real = worker._benchmark_measurement
    done = Path(__file__).with_name("broken-once")

    def broken(item):
        found = real(item)
        if found and not done.exists():
            done.touch()
            found["samples"] = [float("nan")] * len(found["samples"])
        return found

    worker._benchmark_measurement = broken
""")
    pytester.makepyfile(test_x="""
import time

def test_a(benchmark):
    benchmark(time.sleep, 0.001)

def test_b(benchmark):
    benchmark(time.sleep, 0.001)
""")
    result = run(pytester, "--hostperf")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*malformed answer from the agent while running test_x.py::test_a*samples[[]0[]] "
                                 "is nan*", "*1 failed, 1 passed*"])


# -- 15. hostile or empty option values ---------------------------------------------------------

@pytest.mark.parametrize("envs", ["ssh:-Jx", "ssh:-Fevil", "native,ssh:-oProxyCommand=x"])
def test_an_ssh_host_that_looks_like_an_option_is_a_usage_error(sleepy: pytest.Pytester, envs: str) -> None:
    result = run(sleepy, "--hostperf", f"--hostperf-envs={envs}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*needs a host*may not start with '-'*"])


@pytest.mark.parametrize("ini, message", [
    ("hostperf_envs =", "*ini option hostperf_envs = '': no environment given*"),
    ("hostperf_tolerance =", "*ini option hostperf_tolerance = '': tolerance '' is not a number*"),
])
def test_an_empty_ini_value_is_a_usage_error(sleepy: pytest.Pytester, ini: str, message: str) -> None:
    sleepy.makeini(f"[pytest]\n{ini}\n")
    result = run(sleepy, "--hostperf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_an_empty_ini_path_means_the_default(sleepy: pytest.Pytester) -> None:
    sleepy.makeini("[pytest]\nhostperf_baselines =\nhostperf_json =\nhostperf_require =\n")
    assert run(sleepy, "--hostperf", "--hostperf-save").ret == 0
    assert baseline(sleepy).exists()
