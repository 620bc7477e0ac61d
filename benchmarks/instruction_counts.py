"""Instruction counts of the example project: agreement, native vs docker, cost, I/O.

Every session starts a fresh counting agent (``pytest_hostperf.counting.counting_argv``)
and counts every test of ``example_project`` once:

* ``--native N`` sessions on this host and ``--docker M`` sessions in a scratch image
  (the newest hostperf project image plus Debian's valgrind, built here from .debs
  downloaded on the host, no network in the build): per test the spread of the counts
  over the sessions, the in-session noise floor, and docker's count over native's;
* cost: the agent's start and each count, wall and CPU seconds (the machine is shared:
  CPU seconds are what an idle core would need), beside the test's native call time
  measured by a plain timing agent;
* I/O: the sleep-bound workloads of ``study_project`` at 10 and 20 ms, and the
  small-file test on a disk directory vs a tmpfs: what the count sees and what it does not.

    python3 benchmarks/instruction_counts.py --native 20 --docker 3 \\
        --json benchmarks/results/instructions-sessions.json | tee benchmarks/results/instructions-sessions.log
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from counting_agent import SCRATCH_TAG, CountingAgent, build_valgrind_image, project_image

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example_project"
EXAMPLE_FILES = ["tests/test_catalog_perf.py"]
STUDY = HERE / "study_project"
STUDY_FILES = ["tests/test_workloads.py"]
IO_TESTS = ("test_small_file_cache", "test_sqlite_load_and_query")


def count_session(make_agent: Callable[[], CountingAgent], mount_path: str | None) -> dict[str, Any]:
    """One fresh counting agent: start cost, then every collected test counted once."""
    started = time.perf_counter()
    with make_agent() as agent:
        session: dict[str, Any] = {"start_wall_s": time.perf_counter() - started, "start_cpu_s": agent.cpu_seconds(),
                                   "software_id": None, "tests": {}}
        for nodeid in agent.ready["collected"]:
            cpu, wall = agent.cpu_seconds(), time.perf_counter()
            answer = agent.count(nodeid, mount_path=mount_path)
            if answer.get("instructions") is None:
                raise SystemExit(f"{nodeid} was not counted: {answer.get('instructions_reason') or answer}")
            session["software_id"] = (answer.get("software") or {}).get("id")
            session["tests"][nodeid.split("::")[-1]] = {
                **answer["instructions"], "wall_s": time.perf_counter() - wall, "cpu_s": agent.cpu_seconds() - cpu}
    return session


def native_call_times(project: Path, files: list[str], mount_path: str | None,
                      env: dict[str, str] | None = None) -> dict[str, float]:
    """Median seconds per call of every test, from a plain (uncounted) timing agent."""
    with CountingAgent.native(project, files, valgrind=False, extra_env=env) as agent:
        times = {}
        for nodeid in agent.ready["collected"]:
            samples = agent.run(nodeid, mount_path=mount_path).get("samples") or [float("nan")]
            times[nodeid.split("::")[-1]] = statistics.median(samples)
    return times


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / min(values)


def summarize(native: list[dict[str, Any]], docker: list[dict[str, Any]], call_s: dict[str, float]) -> None:
    print(f"\n## {len(native)} native sessions, {len(docker)} docker sessions of example_project")
    print("\n| test | native call | per call (native) | spread over native sessions | noise floor | "
          "docker / native | count wall / CPU s (native) |")
    print("|---|---|---|---|---|---|---|")
    for test in native[0]["tests"]:
        counts = [s["tests"][test]["per_call"] for s in native]
        noise = max(s["tests"][test]["noise"] for s in native)
        in_docker = [s["tests"][test]["per_call"] for s in docker]
        ratio = f"{statistics.median(in_docker) / statistics.median(counts):.5f}" if in_docker else "-"
        wall = statistics.median(s["tests"][test]["wall_s"] for s in native)
        cpu = statistics.median(s["tests"][test]["cpu_s"] for s in native)
        print(f"| {test} | {1e3 * call_s.get(test, float('nan')):.2f} ms | {statistics.median(counts):,.0f} | "
              f"{100 * spread(counts):.4f}% | {100 * noise:.3f}% | {ratio} | {wall:.1f} / {cpu:.1f} |")
    for label, sessions in (("native", native), ("docker", docker)):
        if sessions:
            walls = [s["start_wall_s"] for s in sessions]
            cpus = [s["start_cpu_s"] for s in sessions]
            print(f"\n{label} agent start under valgrind (collection, fingerprint, zygote): wall median "
                  f"{statistics.median(walls):.1f} s (max {max(walls):.1f}), "
                  f"CPU median {statistics.median(cpus):.1f} s; "
                  f"software ids {sorted({s['software_id'] for s in sessions})}")


def io_example(tmpdir: str) -> None:
    """What the count sees of I/O: sleeps at 10 vs 20 ms, small files on disk vs tmpfs."""
    print("\n## I/O: what callgrind counts and what it does not")
    print("\n| workload | per call (instructions) | noise | native time per call |")
    print("|---|---|---|---|")
    for scale in ("1.0", "2.0"):
        env = {"HOSTPERF_STUDY_SLOWDOWN": scale}
        times = native_call_times(STUDY, STUDY_FILES, None, env)
        with CountingAgent.native(STUDY, STUDY_FILES, extra_env=env) as agent:
            for nodeid in agent.ready["collected"]:
                test = nodeid.split("::")[-1]
                if test in ("test_timer_sleep", "test_event_wait_timeout"):
                    counted = agent.count(nodeid)["instructions"]
                    print(f"| {test} (wait {10 * float(scale):.0f} ms) | {counted['per_call']:,.0f} | "
                          f"{100 * counted['noise']:.3f}% | {1e3 * times[test]:.2f} ms |")
    for label, path in (("a directory on disk", tmpdir), ("tmpfs (/dev/shm)", "/dev/shm")):
        work = tempfile.mkdtemp(prefix="hostperf-h5-io-", dir=path)
        try:
            times = native_call_times(EXAMPLE, EXAMPLE_FILES, work)
            with CountingAgent.native(EXAMPLE, EXAMPLE_FILES) as agent:
                for test in IO_TESTS:
                    counted = agent.count(f"{EXAMPLE_FILES[0]}::{test}", mount_path=work)["instructions"]
                    print(f"| {test} on {label} | {counted['per_call']:,.0f} | {100 * counted['noise']:.3f}% | "
                          f"{1e3 * times[test]:.2f} ms |")
        finally:
            subprocess.run(["rm", "-rf", work], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native", type=int, default=20, help="native sessions")
    parser.add_argument("--docker", type=int, default=3, help="docker sessions (0: skip docker)")
    parser.add_argument("--no-io", action="store_true", help="skip the I/O example")
    parser.add_argument("--keep-image", action="store_true", help=f"keep {SCRATCH_TAG} afterwards")
    parser.add_argument("--json", type=Path, help="write the raw sessions here")
    args = parser.parse_args()

    print(f"# instruction counts, {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="hostperf-h5-counts-", dir="/var/tmp") as tmpdir:
        call_s = native_call_times(EXAMPLE, EXAMPLE_FILES, tmpdir)
        native = []
        for i in range(args.native):
            native.append(count_session(lambda: CountingAgent.native(EXAMPLE, EXAMPLE_FILES), tmpdir))
            print(f"native session {i + 1}/{args.native}: start {native[-1]['start_wall_s']:.1f} s", flush=True)
        docker: list[dict[str, Any]] = []
        if args.docker:
            base, python = project_image()
            print(f"scratch image {SCRATCH_TAG} FROM {base} built in {build_valgrind_image(base):.0f} s", flush=True)
            try:
                for i in range(args.docker):
                    docker.append(count_session(lambda: CountingAgent.docker(SCRATCH_TAG, python, EXAMPLE,
                                                                             EXAMPLE_FILES), "/hostperf-tmpfs"))
                    print(f"docker session {i + 1}/{args.docker}: start {docker[-1]['start_wall_s']:.1f} s", flush=True)
            finally:
                if not args.keep_image:
                    subprocess.run(["docker", "rmi", SCRATCH_TAG], capture_output=True, check=False)
        summarize(native, docker, call_s)
        if not args.no_io:
            io_example(tmpdir)
    if args.json:
        args.json.write_text(json.dumps({"native": native, "docker": docker, "native_call_s": call_s}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
