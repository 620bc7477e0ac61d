"""Does the ratio to native tell the truth? docker/native of CPU-bound tests, default settings.

A CPU-bound Python body costs the same in a container without a CPU quota as natively
(same kernel, same CPU; the docker truth test's 50 blocks of 20 ms rounds read
1.00 +- 0.05), so docker/native must read ~1.00 and never fail a 1.10 overhead budget;
with ``--hostperf-docker-cpus=0.5`` the container gets half a CPU and must read ~2.0,
an `overhead` verdict at the same budget.
Runs whole sessions of the example project's CPU-bound tests (``basket``, ``json``)
with default settings, and appends a summary to
``benchmarks/results/overhead-truth.log``:

    python3 benchmarks/overhead_truth.py --sessions 20 --quota-sessions 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import studylog

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROJECT = ROOT / "example_project"
CPU_BOUND = "basket or json"
BUDGET = 1.10


def session(extra: list[str]) -> tuple[list[dict], float, str]:
    """One session's docker records, its wall time, and pytest's tail when it made no report."""
    with tempfile.TemporaryDirectory(prefix="hostperf-truth-") as temp:
        report = Path(temp) / "r.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--hostperf",
             "--hostperf-envs=native,docker", "-k", CPU_BOUND, f"--hostperf-max-overhead=docker={BUDGET}",
             f"--hostperf-baselines={temp}/baselines", f"--hostperf-json={report}", *extra],
            cwd=PROJECT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
            timeout=1800, check=False)
        wall = time.monotonic() - started
        if not report.exists():
            return [], wall, done.stdout[-2000:] + done.stderr[-2000:]
        rows = [r for r in json.loads(report.read_text())["results"] if r["env"] == "docker"]
        return rows, wall, ""


def summary(label: str, rows: list[dict], walls: list[float], low: float, high: float) -> list[str]:
    ratios = [r["ratio_to_native"]["ratio"] for r in rows if r.get("ratio_to_native")]
    widths = [r["ratio_to_native"]["ci_high"] / r["ratio_to_native"]["ci_low"] - 1 for r in rows
              if r.get("ratio_to_native") and r["ratio_to_native"]["ci_low"] > 0]
    overhead = sum(r["verdict"] == "overhead" for r in rows)
    inside = sum(low <= x <= high for x in ratios)
    methods = sorted({r["ratio_to_native"]["method"].split("; ")[-1] for r in rows if r.get("ratio_to_native")})
    return [f"{label}: {len(ratios)} docker items, {inside}/{len(ratios)} within [{low:.2f}, {high:.2f}], "
            f"median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}], CI width median "
            f"{statistics.median(widths):.1%}, `overhead` verdicts at a {BUDGET:.2f} budget: {overhead}; "
            f"session wall median {statistics.median(walls):.1f} s; {', '.join(methods)}"] if ratios else \
        [f"{label}: no ratio to native measured"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--quota-sessions", type=int, default=5)
    parser.add_argument("--log", type=Path, default=HERE / "results" / "overhead-truth.log")
    args = parser.parse_args()
    header = studylog.header("overhead truth", __file__)
    out = list(header)
    for label, extra, count, (low, high) in (
            ("no quota", [], args.sessions, (0.95, 1.05)),
            # The same 1.10 budget: a real 2x cost must be an `overhead` verdict every time.
            ("--hostperf-docker-cpus=0.5", ["--hostperf-docker-cpus=0.5"],
             args.quota_sessions, (1.8, 2.2))):
        rows: list[dict] = []
        walls: list[float] = []
        for number in range(count):
            found, wall, failure = session(extra)
            rows.extend(found)
            walls.append(wall)
            ratios = [f"{r['ratio_to_native']['ratio']:.3f}" for r in found if r.get("ratio_to_native")]
            print(f"{label} session {number + 1}: {' '.join(ratios) or failure} ({wall:.0f} s)", flush=True)
        out.extend(summary(label, rows, walls, low, high))
    studylog.finish(out, len(header), args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
