"""A fixed reference workload, timed the same way in every environment and session.

It does not measure the user's code: it measures the *machine* right now. Comparing its
timings with those saved in the baseline tells whether the host itself has drifted (a
noisy neighbour, a throttled CPU, a different power state), in which case a slower test
says nothing about the code. Stdlib only: it runs inside every environment.
"""

from __future__ import annotations

import time

#: Each round is ~1 ms of pure-Python work on a current x86 core: short enough to repeat
#: many times in a few tens of milliseconds, long enough to dwarf the timer.
ROUND_ITERATIONS = 20_000


def _workload(count: int) -> int:
    total = 0
    for i in range(count):
        total += (i * i) % 7
    return total


def measure(rounds: int = 30) -> list[float]:
    """Seconds per round, after one warm-up round."""
    _workload(ROUND_ITERATIONS)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        _workload(ROUND_ITERATIONS)
        samples.append(time.perf_counter() - started)
    return samples
