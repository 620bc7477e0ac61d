"""``pytest --hostperf --hostperf-envs=native,docker`` end to end, against the real engine.

Truth (ratio to native with and without a CPU quota, mounts side by side), the overhead
gate, clear errors, and nothing left behind after a normal run, ``-x``, SIGINT and
SIGKILL. Skipped only when no engine answers and HOSTPERF_REQUIRE_DOCKER is unset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from sessions import FAST

from pytest_hostperf.environments import labels as owner_labels

pytestmark = pytest.mark.docker


CPU_AND_IO = """
import time
import pytest

def spin(count):
    # A fixed amount of CPU work (~0.2 s here): longer than the CFS period (100 ms), so a
    # CPU quota throttles every round alike instead of a few rounds a lot.
    total = 0
    for i in range(count):
        total += i % 7
    return total

def test_cpu(benchmark):
    benchmark.pedantic(spin, args=(3_000_000,), rounds=4, iterations=1, warmup_rounds=1)

def test_quota_spin(benchmark):
    # ~0.2 s rounds (a quota throttles in 100 ms periods), two per block after one
    # warm-up round: the first round after an idle spell starts with unused quota and
    # reads ~1.6x, not 2x. Twenty blocks alternate native and docker every ~2 s.
    benchmark.pedantic(spin, args=(3_000_000,), rounds=2, iterations=1, warmup_rounds=1)

def test_short_spin(benchmark):
    # ~20 ms rounds: with no quota to see, short rounds let native and docker alternate
    # every ~0.1 s, finer than this shared machine's slow phases (ms to s).
    benchmark.pedantic(spin, args=(300_000,), rounds=4, iterations=1, warmup_rounds=1)

def test_files(benchmark, hostperf_dir):
    def write_read():
        for i in range(50):
            (hostperf_dir / f"f{i}").write_bytes(b"x" * 256)
        return sum(len(p.read_bytes()) for p in hostperf_dir.iterdir())
    assert benchmark(write_read) == 50 * 256
"""




def ours(engine: Any) -> dict[str, list[str]]:
    """What hostperf sessions run by these tests created and should have removed.

    Resources labelled with this very process's pid belong to in-process backend tests of
    the same run (their fixtures live until the run ends), not to a session under test.
    """
    label = {"label": owner_labels.SESSION}

    def foreign(labels: dict[str, str]) -> bool:
        return labels.get(owner_labels.PID) != str(os.getpid())

    return {
        "containers": [c.name for c in engine.containers.list(all=True, filters=label) if foreign(c.labels)],
        "volumes": [v.name for v in engine.volumes.list(filters=label) if foreign(v.attrs.get("Labels") or {})],
    }


def hostperf(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, "--hostperf", "--hostperf-envs=native,docker",
                                         "--hostperf-require=docker", *args, timeout=600)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_work=CPU_AND_IO)
    return pytester


def records(path: Path) -> dict[str, dict[str, Any]]:
    return {r["item"].split("::")[-1]: r for r in json.loads(path.read_text())["results"]}


def test_items_mounts_fingerprint_and_ratio_to_native(project: pytest.Pytester, engine: Any) -> None:
    report = project.path / "r.json"
    result = hostperf(project, "-v", f"--hostperf-json={report}")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_cpu?native? PASSED*", "*test_cpu?docker? PASSED*",
                                 "*test_files?docker-bind? PASSED*", "*test_files?docker-volume? PASSED*",
                                 "*test_files?docker-tmpfs? PASSED*", "*test_files?docker-layer? PASSED*"])
    rows = records(report)
    cpu = rows["test_cpu[docker]"]
    assert cpu["fingerprint"]["env_kind"] in ("container", "container-in-vm")
    assert cpu["fingerprint"]["outside"]["engine"]["kind"] == "Docker Engine"
    assert cpu["fingerprint"]["python_version"] == sys.version.split()[0]  # same interpreter build
    fstypes = {name: next(iter(r["mount_info"].values()))["fstype"]
               for name, r in rows.items() if name.startswith("test_files[docker")}
    assert fstypes["test_files[docker-tmpfs]"] == "tmpfs"
    assert fstypes["test_files[docker-layer]"] == "overlay"
    assert fstypes["test_files[docker-bind]"] not in ("tmpfs", "overlay")
    # Bind, volume and tmpfs on Linux: side by side, each with its ratio and interval.
    for name in ("bind", "volume", "tmpfs"):
        ratio = rows[f"test_files[docker-{name}]"]["ratio_to_native"]
        assert ratio["ci_low"] <= ratio["ratio"] <= ratio["ci_high"]
    assert ours(engine) == {"containers": [], "volumes": []}


def median_ratio(project: pytest.Pytester, test: str, blocks: int, *args: str,
                 sessions: int = 3) -> tuple[float, list[Any]]:
    """Ratio to native of one docker item, median over separate sessions.

    This machine is shared and noisy (pure Python runs up to 1.6x slower in phases of
    milliseconds to seconds, from outside the VM): one session's ratio can be off by a
    few percent for reasons outside the container; the median of three is the figure.
    """
    rows = []
    for i in range(sessions):
        report = project.path / f"r{i}.json"
        result = hostperf(project, "-k", test, f"--hostperf-blocks={blocks}", f"--hostperf-json={report}",
                          "--hostperf-max-overhead=docker=3", *args)
        assert result.ret == 0, result.stdout.str()
        rows.append(records(report)[f"{test}[docker]"])
    ratios = sorted(r["ratio_to_native"]["ratio"] for r in rows)
    return ratios[len(ratios) // 2], rows


def test_cpu_bound_body_costs_nothing_in_a_container(project: pytest.Pytester, engine: Any) -> None:
    # The container shares the kernel and runs the same interpreter build: no overhead.
    # Fifty interleaved blocks of four ~20 ms rounds: single sessions here ranged
    # 0.955-1.032 (10 sessions, benchmarks/results/docker-cpu-truth.log).
    ratio, rows = median_ratio(project, "test_short_spin", 50)
    intervals = [r["ratio_to_native"] for r in rows]
    print("cpu ratio to native per session:", [(round(i["ratio"], 3), round(i["ci_low"], 3), round(i["ci_high"], 3)) for i in intervals])
    assert 0.95 <= ratio <= 1.05, intervals


def test_cpu_quota_raises_the_ratio_to_native(project: pytest.Pytester, engine: Any) -> None:
    # The mechanism, not a speed: a quarter of a CPU makes a single-threaded spin clearly
    # slower, and the fingerprint says why. (Half a CPU is not enough to assert on: when the
    # host is busy, native gets about half a core too, and the ratio read 1.26-1.44.) Rounds of ~0.2 s are longer than the CFS period
    # (100 ms), so the quota throttles each alike; the exact figure depends on the host
    # (at 0.5 CPU, medians of three quiet sessions read 1.76-2.29 on one machine, 2.07-2.36 on
    # another), so the bounds only rule out "no quota" and "no work".
    ratio, rows = median_ratio(project, "test_quota_spin", 8, "--hostperf-docker-cpus=0.25", sessions=1)
    assert all(r["fingerprint"]["cpu_quota"] == 0.25 for r in rows)
    assert all(r["ratio_to_native"]["ci_low"] > 1.5 for r in rows), [r["ratio_to_native"] for r in rows]
    assert 1.8 <= ratio <= 8, [r["ratio_to_native"] for r in rows]


def test_overhead_over_budget_fails_with_its_own_verdict(project: pytest.Pytester, engine: Any) -> None:
    # test_quota_spin's ~0.2 s rounds: a quota shows in every round (test_cpu's first round
    # after an idle spell runs on unused quota, which once put its interval's low end at 0.99).
    result = hostperf(project, "--hostperf-docker-cpus=0.25", "-k", "quota_spin", "--hostperf-blocks=6",
                      "--hostperf-max-overhead=docker=1.05")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["hostperf overhead [[]docker[]]: overhead *x native (CI *) exceeds budget 1.05x",
                                 "FAILED test_work.py::test_quota_spin[[]docker[]] - hostperf overhead*"])


def test_missing_engine_skips_or_errors_with_the_fix(project: pytest.Pytester, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    skipped = project.runpytest_subprocess(*FAST, "--hostperf", "--hostperf-envs=native,docker", "-rs", "-k", "cpu")
    assert skipped.ret == 0
    skipped.stdout.fnmatch_lines(["*SKIPPED*no-engine.sock*", "*1 passed*1 skipped*"])
    required = hostperf(project, "-k", "cpu")
    assert required.ret == 1
    required.stdout.fnmatch_lines(["*ERROR*test_cpu?docker?*", "*1 passed*1 error*"])
    assert "DOCKER_HOST" in required.stdout.str()


def test_agent_dying_in_the_container_fails_one_item(pytester: pytest.Pytester, engine: Any) -> None:
    pytester.makepyfile(test_die="""
import os

def test_a_die(benchmark, hostperf_env):
    if hostperf_env.name == "docker":
        os._exit(7)
    benchmark(sum, [1])

def test_b_after(benchmark):
    benchmark(sum, [1, 2])
""")
    result = hostperf(pytester)
    result.stdout.fnmatch_lines(["*agent crashed while running test_die.py::test_a_die*", "*1 failed, 3 passed*"])
    assert ours(engine) == {"containers": [], "volumes": []}


# -- nothing left behind -------------------------------------------------------------------

def test_nothing_left_after_x_abort(pytester: pytest.Pytester, engine: Any) -> None:
    pytester.makepyfile(test_x="""
def test_a(benchmark, hostperf_dir):
    assert False

def test_b(benchmark):
    benchmark(sum, [1])
""")
    result = hostperf(pytester, "-x")
    assert result.ret == 1
    assert ours(engine) == {"containers": [], "volumes": []}


def _start_session(pytester: pytest.Pytester) -> subprocess.Popen[bytes]:
    pytester.makepyfile(test_slow="""
import time

def test_slow(benchmark, hostperf_dir):
    benchmark.pedantic(time.sleep, args=(0.5,), rounds=60, iterations=1)
""")
    return subprocess.Popen([sys.executable, "-m", "pytest", *FAST, "--hostperf", "--hostperf-envs=docker",
                             "--hostperf-require=docker"], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_container(engine: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ours(engine)["containers"]:
            return
        time.sleep(0.2)
    pytest.fail("the session never created its container")


def test_nothing_left_after_sigint(pytester: pytest.Pytester, engine: Any) -> None:
    process = _start_session(pytester)
    try:
        _wait_for_container(engine)
        time.sleep(2)  # mid-measurement
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert ours(engine) == {"containers": [], "volumes": []}


def _temp_dirs_of(pid: int) -> list[Path]:
    """The session work dirs (``$TMPDIR/hostperf-*``) whose owner record names ``pid``."""
    found = []
    for directory in Path(tempfile.gettempdir()).glob(owner_labels.TEMP_PREFIX + "*"):
        record = owner_labels.read_owner_file(directory / owner_labels.OWNER_FILE)
        if record is not None and record[1].pid == pid:
            found.append(directory)
    return found


def test_sigkilled_session_is_swept_by_the_next(pytester: pytest.Pytester, engine: Any) -> None:
    process = _start_session(pytester)
    try:
        _wait_for_container(engine)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert ours(engine)["containers"], "SIGKILL cannot clean up; the next session must"
    left = _temp_dirs_of(process.pid)
    assert left, "the killed session's work dir should be left (and claimed) for the sweep"
    pytester.makepyfile(test_slow="def test_quick(benchmark):\n    benchmark(sum, [1])\n")
    result = hostperf(pytester)
    assert result.ret == 0
    assert ours(engine) == {"containers": [], "volumes": []}
    assert not [d for d in left if d.exists()], "issue 8.8: the killed session's temp dir stays for good"


def test_bad_container_limits_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_n="def test_n(benchmark):\n    benchmark(sum, [1])\n")
    for option, expected in (("--hostperf-docker-pids=lots", "expected a number of processes"),
                             ("--hostperf-docker-memory=big", "expected a size like 2g"),
                             ("--hostperf-docker-tmpfs-size=150%", "percentage between 0 and 100")):
        result = pytester.runpytest_subprocess("--hostperf", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, option
        assert expected in result.stderr.str() and option.split("=")[0] in result.stderr.str(), result.stderr.str()
    pytester.makeini("[pytest]\nhostperf_docker_pids = 8\n")
    result = pytester.runpytest_subprocess("--hostperf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "hostperf_docker_pids" in result.stderr.str() and "at least 16" in result.stderr.str()
