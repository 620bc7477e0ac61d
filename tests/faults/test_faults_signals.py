"""The session itself SIGKILLed while a test body runs: nothing can be caught.

Native: the docker and qemu variants are in tests/test_docker_plugin.py,
tests/test_qemu_plugin.py and test_qemu_env.py. A SIGKILLed controller cannot clean up,
so its agent must notice and end itself (and its test's children), and the next session
sweeps the work dirs.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from faultkit import BaselineSnapshot, FaultProject, leftovers, wait_for_file, wait_for_no_leftovers

pytestmark = pytest.mark.faults

BODIES = """
import time

def test_a(benchmark):
    benchmark(time.sleep, 0.002)

def test_b_busy(benchmark, hostperf_dir):
    (hostperf_dir / "body-started").write_text("busy until the session is killed")
    time.sleep(120)
    benchmark(time.sleep, 0.002)
"""


def test_a_sigkilled_session_takes_its_busy_agent_along_and_the_next_sweeps_the_rest(project: FaultProject) -> None:
    """SIGTERM/SIGINT/SIGHUP mid-measurement: tests/test_gate.py (nothing saved, nothing left)."""
    project.write("test_s.py", BODIES)

    started = time.monotonic()
    session = project.start("--hostperf-save", "--hostperf-timeout=300")
    wait_for_file(project.tmpdir, "body-started")
    os.kill(session.pid, signal.SIGKILL)
    result = project.finish(session, started, timeout=60)

    assert result.ret == -signal.SIGKILL, result.output
    assert not project.baselines.exists()   # nothing half-written
    # The agent dies with its controller at once, not at the end of its test body (it
    # used to run on for the body's two minutes); the work dir stays for the next sweep.
    assert [line for line in wait_for_no_leftovers(project) if not line.startswith("temp ")] == []
    assert project.run("--hostperf-save", "-k", "test_a").ret == 0
    assert leftovers(project) == []
    assert len(BaselineSnapshot.take(project.baselines).files) == 1
