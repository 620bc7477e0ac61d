"""Do two processes of the same code run it at the same speed? With and without ASLR.

Two worker processes, both pinned to one CPU, run the same tight Python loop; the
controller asks them in random-order pairs (each answer: 4 calls, ~2 ms) and takes the
median of the per-pair log ratios, as ``--hostperf-against`` does. Identical code, so
any ratio away from 1 is the processes themselves. Repeated for fresh process pairs:

- with address-space randomisation (as processes normally start);
- without it (``setarch -R``, as hostperf starts native agents by default);
- without it, one process with an environment larger by 1 to 4000 bytes (a different
  path length or environment: what differs between REV's agent and the working tree's).

Appends to ``benchmarks/results/aslr-pairs.log``:

    python3 benchmarks/aslr_pairs.py --sessions 10
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import studylog

WORKER = r'''
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
def spin(count):
    total = 0
    for i in range(count):
        total += i % 7
    return total
for _ in range(50):
    spin(20000)
for line in sys.stdin:
    started = time.perf_counter()
    for _ in range(4):
        spin(20000)
    sys.stdout.write(f"{time.perf_counter() - started}\n")
    sys.stdout.flush()
'''


def pair_ratio(prefix: list[str], pad: int, cpu: int, pairs: int) -> float:
    """Median ratio of worker B over worker A over ``pairs`` random-order pairs."""
    environs = [dict(os.environ), dict(os.environ, HOSTPERF_PAD="x" * pad) if pad else dict(os.environ)]
    workers = [subprocess.Popen([*prefix, sys.executable, "-c", WORKER, str(cpu)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1, env=environ) for environ in environs]

    def ask(worker: subprocess.Popen[str]) -> float:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    logs = []
    try:
        for _ in range(pairs):
            order = [0, 1]
            random.shuffle(order)
            times = {side: ask(workers[side]) for side in order}
            logs.append(math.log(times[1] / times[0]))
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait()
    return math.exp(statistics.median(logs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10, help="fresh process pairs per condition")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--log", type=Path, default=Path(__file__).resolve().parent / "results" / "aslr-pairs.log")
    args = parser.parse_args()
    out = studylog.header("aslr pairs", __file__)
    no_aslr = ["setarch", os.uname().machine, "-R"]
    conditions = [("ASLR on", [], 0, args.sessions), ("ASLR off", no_aslr, 0, args.sessions)]
    conditions += [(f"ASLR off, environment +{pad} bytes", no_aslr, pad, max(2, args.sessions // 3))
                   for pad in (1, 37, 1000, 4000)]
    for label, prefix, pad, count in conditions:
        ratios = [pair_ratio(prefix, pad, args.cpu, args.pairs) for _ in range(count)]
        out.append(f"{label}: {count} process pairs, ratios {min(ratios):.3f}-{max(ratios):.3f} "
                   f"(largest |log| {max(abs(math.log(r)) for r in ratios):.3f}): "
                   + " ".join(f"{r:.3f}" for r in ratios))
        print(out[-1], flush=True)
    studylog.finish(out, len(out), args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
