"""Per-test orchestration cost and start-up time of each environment.

Generates a throwaway project of ``--tests`` trivial benchmarks, runs it once with
``pytest --hostperf --hostperf-envs=ENVS --hostperf-json=...`` and prints, per
environment, the time until its agent was ready and the median orchestration cost per
test run: the controller's wall time for a request minus the time the agent spent in the
test itself (protocol, JSON, transport). Example:

    python3 benchmarks/orchestration.py --envs native,docker,qemu --tests 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BODY = """
def test_noop_{i}(benchmark):
    benchmark.pedantic(int, rounds=5, iterations=1)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="native,docker,qemu")
    parser.add_argument("--tests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_noop.py").write_text("".join(BODY.format(i=i) for i in range(args.tests)))
        report = project / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hostperf",
             f"--hostperf-envs={args.envs}", f"--hostperf-require={args.envs}", "--hostperf-blocks=1",
             f"--hostperf-json={report}"],
            cwd=project, capture_output=True, text=True, check=False, timeout=1800)
        if not report.exists():
            print(done.stdout[-4000:], done.stderr[-2000:])
            return 1
        data = json.loads(report.read_text())
    print(f"{args.tests} trivial tests per environment; {done.stdout.strip().splitlines()[-1]}")
    print(f"{'env':<8} {'ready in':>9} {'orchestration/test (median)':>28} {'p90':>8}")
    for env, facts in data["environments"].items():
        values = [ms for r in data["results"] if r["env"] == env for ms in r["orchestration_ms"]]
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else float("nan")
        print(f"{env:<8} {facts['startup_s']:>8.1f}s {statistics.median(values):>25.1f} ms {p90:>6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
