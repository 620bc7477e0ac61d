"""``python -m pytest_hostperf.agent.count_probe``: can this environment count instructions?

Run under the counting command (:func:`pytest_hostperf.counting.counting_argv`) inside
the environment to check; prints one protocol line: ``{"event": "count-probe", "works":
bool, "reason": str|null, "per_call": float|null, "noise": float|null, "software": {..}}``.
It counts a small pure-Python function twice in one process, so it also proves that
counts repeat. Exit code 0 either way: the line says what happened.
"""

from __future__ import annotations

import sys
from typing import Any

from pytest_hostperf.agent import protocol
from pytest_hostperf.agent.count_fingerprint import software_fingerprint
from pytest_hostperf.agent.instructions import CountingUnavailable, InstructionCounter


def _probe_workload(n: int) -> int:
    total = 0
    for i in range(n):
        total += (i * 7) % 13
    return total


def probe(target_instructions: int = 2_000_000) -> dict[str, Any]:
    """Count :func:`_probe_workload` twice; the answer as a JSON-able dict."""
    try:
        counter = InstructionCounter.open(target_instructions)
        _, first = counter.measure(_probe_workload, lambda: ((2000,), {}))
        _, second = counter.measure(_probe_workload, lambda: ((2000,), {}))
    except CountingUnavailable as exc:
        return {"event": "count-probe", "works": False, "reason": str(exc), "per_call": None, "noise": None}
    spread = abs(first.per_call - second.per_call) / first.per_call
    return {"event": "count-probe", "works": True, "reason": None, "per_call": first.per_call,
            "noise": max(first.noise, second.noise, spread), "software": software_fingerprint(counter.machine_code)}


def main() -> int:
    sys.stdout.buffer.write(protocol.encode(probe()))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
