"""Helpers for tests that run whole pytest sessions with --hostperf (pytester subprocesses)."""

from __future__ import annotations

import pytest

#: Short benchmarks: a few rounds of a few milliseconds each.
FAST = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--benchmark-warmup=off", "-p", "no:cacheprovider"]

#: A test whose delay is read from delay.txt beside it, so a test can inject a slowdown.
SLEEPY = """
import os, time
from pathlib import Path

DELAY = float(Path(__file__).with_name("delay.txt").read_text())

def test_sleepy(benchmark):
    benchmark(time.sleep, DELAY)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A pytest session in a subprocess, with the short benchmark options."""
    return pytester.runpytest_subprocess(*FAST, *args, timeout=180)
