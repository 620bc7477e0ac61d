"""Synthetic JSON report records for the unit tests of the report modules.

Shaped like ``report.build_json``'s records; the fields later features add (``against``,
``instructions``, ``attribution``, ``tolerance``, ``max_overhead``) only when asked for.
The real shape is checked by the end-to-end test that renders a real session's report.
"""

from __future__ import annotations

import math
import random
from typing import Any

MOUNTS = {"native": None, "docker-bind": "bind", "docker-volume": "volume", "qemu-share": "share"}


def record(test: str = "tests/test_a.py::test_x", target: str = "native", verdict: str | None = "pass",
           median_s: float = 0.002, samples: int = 60, **fields: Any) -> dict[str, Any]:
    env = target.split("-", 1)[0]
    mount = target.split("-", 1)[1] if "-" in target else None
    rng = random.Random(f"{test}{target}")
    data: dict[str, Any] = {
        "test": test, "item": f"{test}[{target}]", "env": env, "target": target, "mount": mount,
        "outcome": "passed", "verdict": verdict, "reason": f"{verdict} because", "median_s": median_s,
        "rounds": samples, "iterations": 1,
        "samples": [median_s * math.exp(rng.gauss(0, 0.05)) for _ in range(samples)],
        "ratio_to_baseline": {"ratio": 1.01, "ci_low": 0.97, "ci_high": 1.05, "confidence": 0.99,
                              "method": "prediction t-test over 5 baseline sessions"},
        "ratio_to_native": None if env == "native" else {"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3,
                                                         "confidence": 0.99, "method": "bootstrap"},
        "p_value": 0.3, "baseline_sessions": 5, "between_session_sd": 0.02, "host_slowdown": 1.0,
        "baseline": f"/b/{env}-{env[0] * 12}.json", "fingerprint_id": env[0] * 12,
        "fingerprint": {"env_kind": "native" if env == "native" else "container", "cpu_model": "Test CPU",
                        "cpu_count": 2, "os": "Linux", "python_implementation": "CPython",
                        "python_version": "3.11.7"},
        "mount_info": {} if mount is None else {mount: {"fstype": "ext4", "kind": "local disk (ext4)"}},
        "orchestration_ms": [1.0], "attempt_medians_s": [],
    }
    data.update(fields)
    return data


def report(records: list[dict[str, Any]], envs: tuple[str, ...] = ("native", "docker"),
           **environments: dict[str, Any]) -> dict[str, Any]:
    envs_seen = list(dict.fromkeys([*envs, *(r["env"] for r in records)]))
    return {
        "schema_version": 1, "tool": "pytest-hostperf", "session_id": "s1", "created": "2026-01-01T00:00:00+00:00",
        "settings": {"envs": list(envs), "tolerance": 0.05, "alpha": 0.01, "comparisons": len(records),
                     "baselines": "/nonexistent/baselines", "blocks": 3},
        "environments": {name: {"fingerprint_id": name[0] * 12, "startup_s": 1.0, "orchestration_ms_median": 1.0,
                                "error": None, "baseline_error": None, **environments.get(name, {})}
                         for name in envs_seen},
        "results": records,
    }
