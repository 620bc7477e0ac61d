"""``--hostperf-measure=time,instructions`` end to end: real valgrind, natively and in docker.

Two sessions of one project: the first saves time and count baselines, the second runs a
working tree where one test does 3% more work. The count flags that test a ``regression``
(attributed to the code) whatever its time says, and passes the unchanged test. Docker is
part of the same sessions when an engine answers (required under CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_hostperf.agent.client_requests import unsupported_reason

pytestmark = pytest.mark.slow

FAST = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--benchmark-warmup=off", "-p", "no:cacheprovider",
        "--hostperf-confirm=0"]

WORK = """
import itertools

SAME = 20000
MORE = 20000


def loop(n):
    # The same work per iteration (no int above 256 is made): n sets the work exactly.
    total, x = 0, 3
    for _ in itertools.repeat(None, n):
        total ^= x * 7 % 13
    return total + 1
"""

TESTS = """
from work import MORE, SAME, loop


def test_same(benchmark):
    assert benchmark(loop, SAME) > 0


def test_more(benchmark):
    assert benchmark(loop, MORE) > 0
"""


def _envs(request: pytest.FixtureRequest) -> list[str]:
    if unsupported_reason() is not None:
        pytest.skip(str(unsupported_reason()))
    if shutil.which("valgrind") is None:
        # CI installs valgrind (scripts/setup.sh): there a missing one is a failure, not a skip.
        missing = "valgrind is not installed (apt-get install valgrind; scripts/setup.sh does it)"
        pytest.fail(missing) if os.environ.get("CI") == "true" else pytest.skip(missing)
    try:
        request.getfixturevalue("engine")
    except pytest.skip.Exception:
        return ["native"]
    return ["native", "docker"]


def _session(project: Path, envs: list[str], *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = project / f"report-{len(list(project.glob('report-*.json')))}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "pytest", *FAST, "--hostperf", f"--hostperf-envs={','.join(envs)}",
                           "--hostperf-measure=time,instructions", f"--hostperf-json={report}", *extra],
                          cwd=project, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report.read_text())


def _same_interpreter(one: dict[str, Any], other: dict[str, Any]) -> bool:
    keys = ("python_version", "python_compiler", "python_implementation")
    return all(one["fingerprint"].get(key) == other["fingerprint"].get(key) for key in keys)


def _by_item(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["test"].split("::")[-1], r["env"]): r for r in data["results"]}


def test_three_percent_more_work_is_an_instruction_regression_and_unchanged_code_passes(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    envs = _envs(request)
    # pytest and pytest-benchmark only in the image: the one every mechanics test shares.
    (tmp_path / "pytest.ini").write_text("[pytest]\nhostperf_requirements_exclude = *\n")
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "test_work.py").write_text(TESTS)

    saved, first = _session(tmp_path, envs, "--hostperf-save")
    assert saved.returncode == 0, saved.stdout[-3000:]
    for (test, env), record in _by_item(first).items():
        counted = record["instructions"]
        assert counted is not None, (test, env, record["reason"])
        assert counted["verdict"] == "no-baseline" and counted["per_call"] > 100_000
    saved_counts = (tmp_path / "baselines" / "instructions").glob("*.json")
    assert sorted(p.name.split("-")[0] for p in saved_counts) == sorted(envs)
    assert set(first["counting"]) == set(envs) and all(c["startup_s"] > 0 for c in first["counting"].values())

    (tmp_path / "work.py").write_text(WORK.replace("MORE = 20000", "MORE = 20600"))
    changed, second = _session(tmp_path, envs)
    assert changed.returncode == 1, changed.stdout[-3000:]
    records = _by_item(second)
    for env in envs:
        more, same = records[("test_more", env)], records[("test_same", env)]
        assert more["verdict"] == "regression" and more["instructions"]["verdict"] == "regression", more["reason"]
        # 3% more loop iterations, plus the call's constant cost: a hair under +3%.
        assert 1.025 < more["instructions"]["ratio_to_baseline"] < 1.031
        assert more["attribution"] in ("code", "both") and "instructions +" in more["reason"]
        assert same["instructions"]["verdict"] == "pass", same["reason"]
        assert abs(same["instructions"]["ratio_to_baseline"] - 1) < 0.002
        assert same["verdict"] not in ("regression", "overhead"), same["reason"]
    if len(envs) == 2 and _same_interpreter(records[("test_same", "native")], records[("test_same", "docker")]):
        # The project image carries the host's interpreter build: the same count inside.
        native, docker = (records[("test_same", env)]["instructions"]["per_call"] for env in envs)
        assert docker == pytest.approx(native, rel=0.01)
    assert "instructions [who]" in changed.stdout and "+3.0" in changed.stdout
    failed = [line for line in changed.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(envs) and all("test_more" in line for line in failed), failed
    assert not _processes_naming(tmp_path), "a counting agent outlived its session"


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (the agents get it as --rootdir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found
