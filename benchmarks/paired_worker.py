"""A worker for benchmarks/paired_prototype.py: holds one version of a few workloads.

Stdlib only (it also runs inside a container). Started as
``python3 paired_worker.py WORKLOAD SIZE``: the workload's source is compiled with SIZE
written into it as a literal, the way two commits of a project differ by a constant,
so code A and code B are different code objects, not one function given another
argument. Then it answers requests on stdin, one per line:

* ``run ITERATIONS`` -> the seconds ``ITERATIONS`` calls took, wall clock
  (``time.perf_counter``, what pytest-benchmark times) and this thread's CPU time
  (``time.thread_time``, which leaves out the time other processes held the CPU);
* ``probe ITERATIONS`` -> the same for a fixed probe workload, identical in every worker
  (hostperf's reference workload, pytest_hostperf/agent/reference.py, at 2,000 steps):
  what the two workers' speeds do at the same moment, whatever code they hold;
* ``quit`` (or end of input) -> exits.
"""

from __future__ import annotations

import sys
import time

#: The workloads, each a function ``work()`` whose cost is linear in SIZE (so SIZE
#: raised by 10% makes a call ~10% slower), pure Python and CPU-bound.
WORKLOADS = {
    "arith": (
        "def work():\n"
        "    total = 0\n"
        "    for i in range(SIZE):\n"
        "        total += (i * i) % 7\n"
        "    return total\n"),
    "strings": (
        "def work():\n"
        "    parts = []\n"
        "    for i in range(SIZE):\n"
        "        parts.append(str(i))\n"
        "    return len(','.join(parts))\n"),
    "dicts": (
        "def work():\n"
        "    table = {}\n"
        "    for i in range(SIZE):\n"
        "        table[i & 1023] = table.get(i & 1023, 0) + i\n"
        "    return len(table)\n"),
}


def build(workload: str, size: int):
    namespace: dict = {}
    exec(compile(WORKLOADS[workload].replace("SIZE", str(size)), f"<{workload} {size}>", "exec"), namespace)  # noqa: S102
    return namespace["work"]


def probe() -> int:
    total = 0
    for i in range(2000):
        total += (i * i) % 7
    return total


def serve(work) -> None:
    functions = {"run": work, "probe": probe}
    for function in functions.values():
        function()  # the first call pays for the cold caches, in no measurement
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            return
        function, iterations = functions[command[0]], int(command[1])
        started, started_cpu = time.perf_counter(), time.thread_time()
        for _ in range(iterations):
            function()
        elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
        sys.stdout.write(f"{elapsed!r} {elapsed_cpu!r}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(build(sys.argv[1], int(sys.argv[2])))
