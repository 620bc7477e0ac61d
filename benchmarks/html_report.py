"""How long the HTML report takes to render and how large it gets.

Two measurements, each a fresh ``hostperf report`` process (what a user waits for:
imports, reading the JSON and the baselines, compressing plotly.js, writing the file):

* ``--example PATH.json``: a real session's report (the example project's, run with
  ``cd example_project && pytest --hostperf --hostperf-envs=native,docker,qemu
  --hostperf-json=PATH.json``) with its baselines. Target: < 2 s.
* a synthetic report of ``--tests`` tests (default 100), worst case for size: half the
  tests on the eight targets of a file-system test (native, four docker mounts, three
  qemu mounts), half on native, docker and qemu; 1000 samples per record (the JSON
  report's cap); ten saved sessions per target in the baselines; every record with
  ``against`` and ``instructions``. Target: file < 5 MB.

With ``--browser``, the synthetic report is also opened in headless Chromium (the test
helper ``tests/headless_chromium.py``): the time from navigation until the first chart
is drawn in a 1400x900 window scrolled to the middle test (what a reader waits for:
charts are drawn as they come near the screen), and until all charts are drawn in a
window as tall as the page (every chart on screen at once, as for a full-page screenshot).

    python3 benchmarks/html_report.py --example /tmp/x.json --repeat 5 --browser
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_hostperf.baselines import BaselineStore, dumps
from pytest_hostperf.model import Record
from pytest_hostperf.stats import SessionSummary

FILE_TARGETS = ["native", "docker-bind", "docker-volume", "docker-tmpfs", "docker-layer",
                "qemu-guest", "qemu-share", "qemu-tmpfs"]
CPU_TARGETS = ["native", "docker", "qemu"]
COST = {"native": 1.0, "docker": 1.03, "qemu": 14.0}
SAMPLES, HISTORY = 1000, 10


def _ratio(rng: random.Random, centre: float, width: float) -> dict[str, Any]:
    value = centre * math.exp(rng.gauss(0, width / 3))
    return {"ratio": value, "ci_low": value / (1 + width), "ci_high": value * (1 + width),
            "confidence": 0.9996, "method": "synthetic"}


def synthetic_report(tests: int, baselines: Path, seed: int = 1) -> dict[str, Any]:
    """A report of ``tests`` tests and the baselines (``HISTORY`` sessions each) behind it."""
    rng = random.Random(seed)
    store, records, saved = BaselineStore(baselines), [], {}
    for t in range(tests):
        test = f"tests/test_synthetic.py::test_workload_{t:03d}"
        base = 10 ** rng.uniform(-5, -1)
        for target in FILE_TARGETS if t % 2 else CPU_TARGETS:
            env, _, mount = target.partition("-")
            median = base * COST[env] * rng.uniform(0.8, 1.3)
            samples = [median * math.exp(abs(rng.gauss(0, 0.08))) for _ in range(SAMPLES)]
            records.append({
                "test": test, "item": f"{test}[{target}]", "env": env, "target": target, "mount": mount or None,
                "outcome": "passed", "verdict": rng.choice(["pass", "pass", "unstable", "regression"]),
                "reason": "synthetic", "median_s": median, "rounds": SAMPLES, "iterations": 1,
                "samples": samples, "ratio_to_baseline": _ratio(rng, 1.0, 0.05),
                "ratio_to_native": None if env == "native" else _ratio(rng, COST[env], 0.1),
                "p_value": rng.random(), "baseline_sessions": HISTORY, "between_session_sd": 0.03,
                "host_slowdown": 1.0, "baseline": None, "fingerprint_id": f"{env[0]}" * 12,
                "fingerprint": {"env_kind": env, "cpu_model": "Synthetic CPU", "cpu_count": 2},
                "mount_info": {mount: {"fstype": "ext4", "kind": "local disk (ext4)"}} if mount else {},
                "orchestration_ms": [1.0], "attempt_medians_s": [], "max_overhead": 1.5 if env == "docker" else 40,
                "against": {"rev": "0123456789abcdef0123", "ratio": 1.0, "ci": [0.99, 1.01], "p_value": 0.4,
                            "pairs": 120},
                "instructions": {"per_call": rng.uniform(1e5, 1e9), "ratio_to_baseline": 1.0, "noise": 0.0005},
                "attribution": "none",
            })
            for session in range(HISTORY):
                history = [median * math.exp(rng.gauss(0, 0.03)) for _ in range(200)]
                saved.setdefault((env, session), []).append(Record(
                    test, env, mount, summary=SessionSummary(statistics.median(history), 0.01, 200),
                    samples=tuple(history)))
    for (env, session), measurements in saved.items():
        store.save(env, env[0] * 12, {}, {}, measurements, session_id=f"old{session}", max_history=HISTORY)
    return {"schema_version": 1, "tool": "pytest-hostperf", "session_id": "synthetic",
            "created": "2026-01-01T00:00:00+00:00",
            "settings": {"envs": ["native", "docker", "qemu"], "tolerance": 0.05, "alpha": 0.01,
                         "comparisons": len(records), "baselines": str(baselines), "blocks": 3},
            "environments": {e: {"fingerprint_id": e[0] * 12, "startup_s": 1.0, "orchestration_ms_median": 1.0,
                                 "error": None, "baseline_error": None} for e in ("native", "docker", "qemu")},
            "results": records}


def time_command(results: Path, output: Path, baselines: Path | None, repeat: int) -> list[float]:
    """Wall times of fresh ``hostperf report`` processes."""
    command = [sys.executable, "-m", "pytest_hostperf.cli", "report", str(results), "-o", str(output)]
    command += ["--baselines", str(baselines)] if baselines else []
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def describe(label: str, times: list[float], output: Path, tests: int) -> str:
    return (f"{label}: {tests} tests; render median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}); file {output.stat().st_size / 1e6:.2f} MB")


def time_browser(page: Path, tests: int) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from headless_chromium import open_page

    middle = f"document.getElementById('chart-{tests // 2}')"
    start = time.perf_counter()
    first = open_page(page, f"({middle}.scrollIntoView(), Number(document.body.dataset.chartsDrawn || 0) >= 1)",
                      "performance.now()", timeout=600, screenshot=False, full_height=False)
    first_s = time.perf_counter() - start
    every = open_page(page, "document.body.dataset.chartsReady !== undefined", "performance.now()", timeout=1200,
                      screenshot=False)
    errors = first.errors + every.errors
    return (f"browser: first chart {first.value / 1000:.1f} s after navigation (wall {first_s:.1f} s with "
            f"Chromium's start); all {tests} charts at once, viewport as tall as the page (as the test's "
            f"screenshot does) {every.value / 1000:.1f} s; errors: {errors or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=100, help="tests in the synthetic report (default 100)")
    parser.add_argument("--example", type=Path, help="a real session's JSON report to time as well")
    parser.add_argument("--baselines", type=Path, help="the example's baselines (default: the session's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time drawing in headless Chromium")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="hostperf-html-bench-") as tmp:
        work = Path(tmp)
        if args.example:
            output = work / "example.html"
            times = time_command(args.example, output, args.baselines, args.repeat)
            tests = output.read_text(encoding="utf-8").count('class="chart"')
            print(describe(f"example report {args.example.name}", times, output, tests) + " (target < 2 s)")
        report = synthetic_report(args.tests, work / "baselines")
        results = work / "synthetic.json"
        results.write_text(dumps(report), encoding="utf-8")
        output = work / "synthetic.html"
        times = time_command(results, output, None, args.repeat)
        label = f"synthetic report ({len(report['results'])} records, JSON {results.stat().st_size / 1e6:.1f} MB)"
        print(describe(label, times, output, args.tests) + " (target < 5 MB)")
        if args.browser:
            print(time_browser(output, args.tests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
