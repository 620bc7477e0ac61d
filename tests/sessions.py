"""Helpers for tests that run whole pytest sessions with --hostperf (pytester subprocesses)."""

from __future__ import annotations

import pytest

#: Short benchmarks: a few rounds of a few milliseconds each.
BRIEF = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--benchmark-warmup=off", "-p", "no:cacheprovider"]
#: These sessions test hostperf's mechanics, not a project's dependencies: ``*`` keeps their
#: docker/qemu image to pytest and pytest-benchmark at this interpreter's versions, whatever
#: else it has installed (a developer's interpreter may hold distributions the index lacks),
#: so they all share one image and one VM disk. tests/test_realprojects.py runs the default.
SHARED_IMAGE = ["-o", "hostperf_requirements_exclude=*"]
FAST = [*BRIEF, *SHARED_IMAGE]

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
