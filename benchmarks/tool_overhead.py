"""Wall time of ``pytest --hostperf`` vs plain ``pytest`` (pytest-benchmark) on the same tests.

Alternates the two commands ``--repeat`` times on ``example_project`` (native only, so
both measure the same tests once) and prints the median wall times, their ratio, the
agent's start-up time and the per-test orchestration cost (agent round trip beyond the
test's own run time) from the JSON report. ``--pytest-args`` adds arguments to both
commands, e.g. to measure without the example's warm-up. Example:

    python3 benchmarks/tool_overhead.py --repeat 7
    python3 benchmarks/tool_overhead.py --repeat 7 --pytest-args="--benchmark-warmup=off"
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

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], cwd: Path) -> float:
    env = dict(os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False, timeout=900)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: a verdict failed, the run itself was complete
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--project", type=Path, default=ROOT / "example_project")
    parser.add_argument("--pytest-args", default="", help="extra arguments for both commands (split on spaces)")
    args = parser.parse_args()
    extra = args.pytest_args.split()
    plain, hostperf, orchestration, startup = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            plain.append(timed(extra, args.project))
            report = Path(tmp) / f"r{i}.json"
            # Against the project's committed baselines, as in CI: verdicts, reference
            # workload and statistics included.
            hostperf.append(timed([*extra, "--hostperf", "--hostperf-envs=native", f"--hostperf-json={report}"],
                                  args.project))
            data = json.loads(report.read_text())
            native = data["environments"]["native"]
            orchestration.extend(ms for r in data["results"] for ms in r["orchestration_ms"])
            startup.append(native["startup_s"])
            print(f"run {i + 1}: plain {plain[-1]:.2f} s, --hostperf {hostperf[-1]:.2f} s", flush=True)
    p, h = statistics.median(plain), statistics.median(hostperf)
    print(f"\nplain pytest: median {p:.2f} s; pytest --hostperf: median {h:.2f} s; ratio {h / p:.2f}x "
          f"(target <= 1.3x)")
    print(f"native agent start-up: median {statistics.median(startup):.2f} s; "
          f"orchestration per test run: median {statistics.median(orchestration):.1f} ms "
          f"(p90 {statistics.quantiles(orchestration, n=10)[-1]:.1f} ms, n={len(orchestration)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
