"""Which way of counting only the benchmarked calls: measured, to choose one.

Options (issue #12):

* (a) client requests from inside a warm agent, instrumentation off until needed (what
  ``pytest_hostperf.agent.instructions`` does): the cost is the agent's start plus the
  counted calls;
* (a2) ``--toggle-collect=ffi_call``: collection follows a C function only the counted
  path goes through, but instrumentation must be on from the start, so start-up, the
  pytest import and collection all run at callgrind speed;
* (a3) ``callgrind_control -i on|off`` from outside (vgdb): latency of one switch;
* (b) differencing (aio-libs/multidict's ``benchmarks/callgrind_driver.py``): four
  whole-process counts per test ({run, no-op} x two round counts), each paying the
  interpreter's start-up under callgrind;
* and, for (a), pymalloc vs glibc malloc: how much two blocks of the same call differ.

    python3 benchmarks/instruction_methods.py | tee benchmarks/results/instructions-methods.log
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pytest_hostperf import counting  # noqa: E402

PYTHON = os.path.realpath(sys.executable)
VALGRIND = ["valgrind", "--tool=callgrind", "--vgdb=no", "-q"]
I_REFS = re.compile(r"^==\d+== Collected : (\d+)", re.M)
WORKLOAD = """
import json, sys
doc = json.dumps({f"k{i}": i for i in range(200)})
def run(): json.loads(doc)
def noop(): pass
fn = run if sys.argv[1] == "run" else noop
for _ in range(int(sys.argv[2])): fn()
"""


def timed(argv: list[str], env: dict[str, str] | None = None, **kwargs: object) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the children, stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False,
                          **kwargs)  # type: ignore[call-overload]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.stderr


def whole_process_count(args: list[str], workdir: str) -> tuple[int, float, float]:
    out = f"{workdir}/whole.out"
    wall, cpu, _ = timed([*VALGRIND, f"--callgrind-out-file={out}", PYTHON, *args], {"PYTHONHASHSEED": "0"})
    with open(out, encoding="utf-8") as dump:
        total = next(int(line.split()[1]) for line in dump if line.startswith(("summary:", "totals:")))
    os.unlink(out)
    return total, wall, cpu


def report(label: str, wall: float, cpu: float, extra: str = "") -> None:
    print(f"  {label:<58} wall {wall:6.2f} s  cpu {cpu:6.2f} s  {extra}", flush=True)


def main() -> int:
    print(f"# instruction counting methods, {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs, {PYTHON}")
    with tempfile.TemporaryDirectory(prefix="hostperf-h5-methods-") as workdir:
        script = f"{workdir}/workload.py"
        Path(script).write_text(WORKLOAD)
        print("start-up under valgrind (instrumentation off = what (a) pays once per agent):")
        for label, extra in (("python -c pass, --instr-atstart=no", ["--instr-atstart=no"]),
                             ("python -c pass, instrumented", [])):
            report(label, *timed([*VALGRIND, *extra, "--callgrind-out-file=/dev/null", PYTHON, "-c", "pass"])[:2])
        imports = "import pytest, pytest_benchmark.plugin"
        for label, extra in (("import pytest + pytest-benchmark, --instr-atstart=no (a)", ["--instr-atstart=no"]),
                             ("same, instrumented, --toggle-collect=ffi_call (a2)",
                              ["--collect-atstart=no", "--toggle-collect=ffi_call"])):
            report(label, *timed([*VALGRIND, *extra, "--callgrind-out-file=/dev/null", PYTHON, "-c", imports])[:2])
        report("native python, same import", *timed([PYTHON, "-c", imports])[:2])

        print("(b) differencing: 4 whole-process counts of 100/200 json.loads vs no-op:")
        points = {}
        started = time.perf_counter()
        cpu_total = 0.0
        for arm in ("run", "noop"):
            for rounds in (100, 200):
                total, _, cpu = whole_process_count([script, arm, str(rounds)], workdir)
                points[arm, rounds] = total
                cpu_total += cpu
        per_call = ((points["run", 200] - points["run", 100]) - (points["noop", 200] - points["noop", 100])) / 100
        report("4 processes (plain python, no pytest)", time.perf_counter() - started, cpu_total,
               f"per call {per_call:,.0f}")
        repeat = [whole_process_count([script, "run", "100"], workdir)[0] for _ in range(2)]
        print(f"  whole-process count of the same run twice: {repeat} (spread {abs(repeat[0] - repeat[1])})")

        print("(a3) callgrind_control -i on/off from outside (vgdb):")
        measure_callgrind_control(workdir)

        print("(a) the dump directory's path: a fresh counting agent per session counts the JSON round trip")
        for label, fixed in (("random mkdtemp name per session", False), ("the same path every session", True)):
            counts = dump_path_sessions(fixed, sessions=8)
            print(f"  {label:<34} {counts}  {len(set(counts))} distinct, spread "
                  f"{100 * (max(counts) - min(counts)) / min(counts):.3f}%", flush=True)

        print("(a) pymalloc vs glibc malloc, 8 blocks of 7 calls of a loop of 2000 int ops, one process each:")
        for allocator in ("pymalloc", "malloc"):
            blocks = blocks_of(allocator, workdir)
            spread = (max(blocks) - min(blocks)) / min(blocks)
            print(f"  {allocator:<9} {blocks}  spread {100 * spread:.3f}%", flush=True)
    return 0


def measure_callgrind_control(workdir: str) -> None:
    if shutil.which("callgrind_control") is None:
        print("  callgrind_control not installed")
        return
    sleeper = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "-q",
                                f"--callgrind-out-file={workdir}/ctl.out", PYTHON, "-c",
                                "import time\nfor _ in range(600): sum(range(1000)); time.sleep(0.05)"])
    try:
        time.sleep(5)  # let it start
        for switch in ("on", "off", "on", "off"):
            wall, cpu, _ = timed(["callgrind_control", "-i", switch, str(sleeper.pid)])
            report(f"callgrind_control -i {switch} (process mostly sleeping)", wall, cpu)
    finally:
        sleeper.kill()
        sleeper.wait()


def dump_path_sessions(fixed: bool, sessions: int) -> list[int]:
    from counting_agent import CountingAgent  # noqa: PLC0415 - the benchmarks' own client

    counts = []
    with counting.DumpDirectory() as stable:
        for _ in range(sessions):
            dump_dir = stable if fixed else tempfile.mkdtemp(prefix="hostperf-h5-dumps-")
            try:
                with CountingAgent.native(HERE.parent / "example_project", ["tests/test_catalog_perf.py"],
                                          dump_dir=dump_dir) as agent:
                    answer = agent.count("tests/test_catalog_perf.py::test_json_roundtrip[100]")
                counts.append(round(answer["instructions"]["per_call"]))
            finally:
                if not fixed:
                    shutil.rmtree(dump_dir, ignore_errors=True)
    return counts


def blocks_of(allocator: str, workdir: str) -> list[int]:
    code = (f"import sys, json\nsys.path.insert(0, {str(HERE.parent)!r})\n"
            "from pytest_hostperf.agent.instructions import InstructionCounter\n"
            "def work(k):\n    s = 0\n    for i in range(k): s += i * i % 7\n    return s\n"
            "c = InstructionCounter.open()\nout = []\n"
            "with c._instrumented():\n"
            "    for _ in range(8): out.append(c._block(work, lambda: ((2000,), {}), None, 7)[1])\n"
            "print(json.dumps(out))\n")
    dumps = tempfile.mkdtemp(dir=workdir)
    argv = counting.counting_argv([PYTHON, "-c", code], dumps, disable_aslr=False)
    env = {**os.environ, **counting.counting_environ(dumps, None if allocator == "pymalloc" else allocator)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    sys.exit(main())
