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

def test_tiny_spin(benchmark):
    # ~0.3 ms a call: pairs of fixed-work halves of a few calls each.
    benchmark(spin, 3_000)

def test_plain_spin(benchmark):
    # ~20 ms a call, calibrated by hostperf into halves of --hostperf-pair-round.
    benchmark(spin, 300_000)

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
    # Not the long spins (their own tests below): every item pairs with native.
    # The overhead gate is opened: what a volume or the layer costs against the host's /tmp
    # depends on the host's file systems (paired, a volume read 2.6x native here, narrowly);
    # the subject is the items, their mounts and intervals.
    result = hostperf(project, "-v", f"--hostperf-json={report}", "-k", "not spin", "--hostperf-pair-budget=0.1",
                      "--hostperf-max-overhead=docker=1000")
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


def paired_ratio(project: pytest.Pytester, test: str, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    """One session of ``test`` in native and docker; its result and the docker record."""
    report = project.path / f"{test}.json"
    result = hostperf(project, "-k", test, f"--hostperf-json={report}", *args)
    return result, records(report)[f"{test}[docker]"]


def test_cpu_bound_body_reads_about_one_from_pairs(project: pytest.Pytester, engine: Any) -> None:
    # The container shares the kernel and runs the same interpreter build: no overhead.
    # Default pairing (2 ms halves, 0.4 s a side): the interval must hold ~1 (generous
    # bounds: under load the intervals widen, which is what they are for).
    result, row = paired_ratio(project, "test_tiny_spin", "--hostperf-max-overhead=docker=1.5")
    assert result.ret == 0, result.stdout.str()
    ratio = row["ratio_to_native"]
    assert ratio["pairs"] >= 40 and "Hodges-Lehmann" in ratio["method"], ratio
    assert ratio["ci_low"] <= 1.05 and ratio["ci_high"] >= 0.95 and 0.67 <= ratio["ratio"] <= 1.5, ratio


def test_cpu_quota_raises_the_ratio_and_fails_the_overhead_budget(project: pytest.Pytester, engine: Any) -> None:
    # A quota binds a sustained load only: in pairs, the container idles during native's
    # half and the quota refunds it (0.1 CPU read 1.05x in held pairs of 10 ms halves), so
    # a target with a quota native does not have is measured on its own, in sustained
    # rounds. The mechanism, not a speed: clearly above 1 and an overhead failure at 1.05.
    # A tenth of a CPU, because a quota only binds when the container could get more: on
    # this 2-core machine at load ~9, native gets ~0.2 of a core too.
    result, row = paired_ratio(project, "test_plain_spin", "--hostperf-docker-cpus=0.1",
                               "--hostperf-max-overhead=docker=1.05")
    assert row["fingerprint"]["cpu_quota"] == 0.1
    ratio = row["ratio_to_native"]
    assert not ratio["pairs"] and ratio["method"].startswith("bootstrap") and ratio["ci_low"] > 1.2, ratio
    assert result.ret == 1
    result.stdout.fnmatch_lines(["hostperf overhead [[]docker[]]: overhead *x native (CI *) exceeds budget 1.05x",
                                 "FAILED test_work.py::test_plain_spin[[]docker[]] - hostperf overhead*"])


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


def test_against_a_revision_in_docker_mounts_revs_tree_beside_the_working_tree(pytester: pytest.Pytester,
                                                                              engine: Any) -> None:
    # A second container on REV's tree (read-only, REV's import roots first): the
    # working tree's 3x faster code reads as an improvement in docker as natively.
    from test_against import git, make_repo

    make_repo(pytester.path, src_layout=False, rev_cost=9000, tree_cost=3000)
    report = pytester.path / "r.json"
    result = hostperf(pytester, "--hostperf-against=HEAD", "-k", "changed or new", f"--hostperf-json={report}")
    assert result.ret == 0, result.stdout.str()
    rows = records(report)
    sha = git(pytester.path, "rev-parse", "HEAD")
    changed = rows["test_changed[docker]"]
    assert changed["verdict"] == "improvement" and changed["against"]["rev"] == sha, changed["against"]
    assert rows["test_new[docker]"]["against"]["error"] == "absent"
    mine = [name for name in ours(engine)["containers"] if name.startswith("hostperf-") and name.endswith("-rev")]
    assert not any(json.loads(report.read_text())["session_id"] in name for name in mine)
