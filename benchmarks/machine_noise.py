"""How noisy is this machine's CPU, and why: the floor under every CPU-bound verdict.

Times hostperf's reference workload (~1 ms of pure Python per round) back to back for
``--seconds`` on one CPU, then again while a spinning process keeps the other CPU busy.
It prints:

* the fast state (5th percentile of a round) and the share of rounds more than 25% slower;
* how long the slow and fast phases last (runs of consecutive rounds in one state);
* how much slower a round is while the VM's other CPU is busy: if it is about 1.0x,
  the slow phases come from outside the VM (other tenants, the hypervisor), not from
  what runs beside the benchmark;
* the spread of 0.5 s window medians (what one benchmark of a session sees) and the
  standard deviation a verdict would need at the default gate.

Example:

    python3 benchmarks/machine_noise.py --seconds 30
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_hostperf.agent.reference import ROUND_ITERATIONS, _workload  # noqa: E402

SLOW = 1.25  # a round this much slower than the fast state counts as contended


def timeline(seconds: float) -> list[tuple[float, float]]:
    """(start offset, duration) of back-to-back reference rounds."""
    rounds: list[tuple[float, float]] = []
    origin = time.perf_counter()
    while time.perf_counter() - origin < seconds:
        started = time.perf_counter()
        _workload(ROUND_ITERATIONS)
        rounds.append((started - origin, time.perf_counter() - started))
    return rounds


def phases(rounds: list[tuple[float, float]], fast: float) -> dict[bool, list[float]]:
    """Lengths in seconds of runs of consecutive slow (True) or fast (False) rounds."""
    runs: dict[bool, list[float]] = {True: [], False: []}
    state, since = rounds[0][1] > SLOW * fast, rounds[0][0]
    for start, duration in rounds[1:]:
        slow = duration > SLOW * fast
        if slow != state:
            runs[state].append(start - since)
            state, since = slow, start
    runs[state].append(rounds[-1][0] - since)
    return runs


def window_medians(rounds: list[tuple[float, float]], window: float) -> list[float]:
    windows: dict[int, list[float]] = {}
    for start, duration in rounds:
        windows.setdefault(int(start / window), []).append(duration)
    return [statistics.median(v) for k, v in sorted(windows.items())[:-1]]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    pin(cpus[0])

    alone = timeline(args.seconds)
    durations = [d for _, d in alone]
    fast = sorted(durations)[len(durations) // 20]
    runs = phases(alone, fast)
    slow_share = sum(d > SLOW * fast for d in durations) / len(durations)
    medians = window_medians(alone, 0.5)
    logs = [math.log(m) for m in medians]
    print(f"reference round, one CPU, {args.seconds:.0f} s, {len(durations)} rounds:")
    print(f"  fast state {fast * 1e3:.3f} ms; median {statistics.median(durations) * 1e3:.3f} ms; "
          f"{slow_share:.0%} of rounds >{SLOW - 1:.0%} slower")
    for state, name in ((True, "slow"), (False, "fast")):
        lengths = sorted(runs[state])
        if lengths:
            print(f"  {name} phases: {len(lengths)}, median {statistics.median(lengths) * 1e3:.0f} ms, "
                  f"longest {lengths[-1]:.2f} s")
    print(f"  0.5 s window medians: SD of logs {statistics.stdev(logs):.1%}, "
          f"range {min(medians) * 1e3:.3f}-{max(medians) * 1e3:.3f} ms")

    if len(cpus) > 1:
        spinner = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-c", "import os, time\n"
             f"os.sched_setaffinity(0, {{{cpus[1]}}})\n"
             f"end = time.time() + {args.seconds / 2 + 1}\n"
             "while time.time() < end: pass\n"])
        try:
            time.sleep(0.2)
            busy = [d for _, d in timeline(args.seconds / 2)]
        finally:
            spinner.kill()
            spinner.wait()
        print(f"with CPU {cpus[1]} busy: median {statistics.median(busy) * 1e3:.3f} ms = "
              f"{statistics.median(busy) / fast:.2f}x the fast state; "
              f"{sum(d > SLOW * fast for d in busy) / len(busy):.0%} of rounds slow")

    # The gate (alpha 0.01 over 6 comparisons, 10 saved sessions) proves a 10% slowdown
    # past a 5% tolerance only if the session SD is below about
    # (ln 1.10 - ln 1.05) / (t(0.99833, 9) * sqrt(1.1)) = 1.1%.
    print("a 10% slowdown at 5% tolerance (alpha 0.01 / 6 comparisons, 10 saved sessions) "
          "needs session SD <= ~1.1%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
