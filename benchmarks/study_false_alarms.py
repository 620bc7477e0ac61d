"""False alarms on unchanged code and detection of a true slowdown, vs pytest-benchmark.

Runs ``benchmarks/study_project`` (six CPU-bound and two timer-bound linear-cost workloads)
in fresh pytest sessions:

1. saves ``--baseline-sessions`` sessions with ``pytest --hostperf --hostperf-save`` and one
   pytest-benchmark baseline (``--benchmark-save``), as each tool's users would;
2. then ``--sessions`` rounds, each running, back to back on the same machine state:
   hostperf unchanged, pytest-benchmark ``--benchmark-compare-fail=median:5%`` unchanged,
   hostperf with a true ``--slowdown`` (every workload does 10% more work), and
   pytest-benchmark with the same slowdown.

It prints a Markdown summary and writes the raw counts as JSON. Example:

    python3 benchmarks/study_false_alarms.py --baseline-sessions 10 --sessions 20 \
        --out benchmarks/results/study.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "study_project"
PB_FAILED = re.compile(r"^\s*(test_\w+).*Field 'median' has failed", re.MULTILINE)


def pytest(workdir: Path, args: list[str], slowdown: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOSTPERF_STUDY_SLOWDOWN=str(slowdown))
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False)


def hostperf_session(workdir: Path, slowdown: float, save: bool, report: Path) -> dict[str, str]:
    args = ["--hostperf", f"--hostperf-json={report}"] + (["--hostperf-save"] if save else [])
    done = pytest(workdir, args, slowdown)
    if not report.exists():
        raise SystemExit(f"hostperf session failed to report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    data = json.loads(report.read_text())
    return {r["test"].split("::")[-1]: (r["verdict"] or r["outcome"]) for r in data["results"]}


def pytest_benchmark_session(workdir: Path, slowdown: float) -> tuple[set[str], list[str]]:
    done = pytest(workdir, ["--benchmark-storage=file://./.pb", "--benchmark-compare=0001",
                            "--benchmark-compare-fail=median:5%"], slowdown)
    text = done.stdout + done.stderr
    tests = sorted(set(re.findall(r"(test_\w+)", (PROJECT / "tests" / "test_workloads.py").read_text())))
    return set(PB_FAILED.findall(text)), tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-sessions", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--slowdown", type=float, default=1.10)
    parser.add_argument("--out", type=Path, default=None, help="write the counts as JSON here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hostperf-study-"))
    shutil.copytree(PROJECT, workdir, dirs_exist_ok=True)
    started = time.time()
    try:
        for i in range(args.baseline_sessions):
            hostperf_session(workdir, 1.0, True, workdir / f"save-{i}.json")
            if i == 0:
                pytest(workdir, ["--benchmark-storage=file://./.pb", "--benchmark-save=base"], 1.0)
            print(f"baseline session {i + 1}/{args.baseline_sessions} saved", flush=True)

        verdicts: dict[str, collections.Counter[str]] = {"unchanged": collections.Counter(),
                                                         "slowed": collections.Counter()}
        per_test: dict[str, dict[str, collections.Counter[str]]] = {
            "unchanged": collections.defaultdict(collections.Counter),
            "slowed": collections.defaultdict(collections.Counter)}
        pb_fail = {"unchanged": 0, "slowed": 0}
        pb_total = {"unchanged": 0, "slowed": 0}
        for i in range(args.sessions):
            for condition, factor in (("unchanged", 1.0), ("slowed", args.slowdown)):
                result = hostperf_session(workdir, factor, False, workdir / f"{condition}-{i}.json")
                for test, verdict in result.items():
                    verdicts[condition][verdict] += 1
                    per_test[condition][test][verdict] += 1
                failed, tests = pytest_benchmark_session(workdir, factor)
                pb_fail[condition] += len(failed)
                pb_total[condition] += len(tests)
            print(f"session {i + 1}/{args.sessions}: unchanged {dict(verdicts['unchanged'])}, "
                  f"slowed {dict(verdicts['slowed'])}; pytest-benchmark failures so far "
                  f"{pb_fail['unchanged']}/{pb_total['unchanged']} unchanged, "
                  f"{pb_fail['slowed']}/{pb_total['slowed']} slowed", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    unchanged_total = sum(verdicts["unchanged"].values())
    false_alarms = verdicts["unchanged"]["regression"]
    stable_slowed = sum(n for v, n in verdicts["slowed"].items() if v != "unstable")
    detected = verdicts["slowed"]["regression"]
    summary = {
        "baseline_sessions": args.baseline_sessions, "sessions": args.sessions, "slowdown": args.slowdown,
        "minutes": round((time.time() - started) / 60, 1),
        "hostperf": {
            "unchanged": dict(verdicts["unchanged"]), "slowed": dict(verdicts["slowed"]),
            "false_alarm_rate": false_alarms / unchanged_total if unchanged_total else None,
            "detection_rate_stable": detected / stable_slowed if stable_slowed else None,
            "per_test": {c: {t: dict(v) for t, v in tests.items()} for c, tests in per_test.items()},
        },
        "pytest_benchmark_median_5pct": {
            "unchanged_failures": pb_fail["unchanged"], "unchanged_verdicts": pb_total["unchanged"],
            "slowed_failures": pb_fail["slowed"], "slowed_verdicts": pb_total["slowed"],
        },
    }
    print()
    print(f"## Study: {args.sessions} sessions against {args.baseline_sessions} saved baseline sessions "
          f"({summary['minutes']} min)")
    print()
    print("| tool | unchanged code: failing verdicts | true slowdown "
          f"x{args.slowdown}: failing verdicts |")
    print("|---|---|---|")
    print(f"| pytest-hostperf | {false_alarms}/{unchanged_total} | {detected}/{stable_slowed} of stable "
          f"({verdicts['slowed']['unstable']} unstable) |")
    print(f"| pytest-benchmark median:5% | {pb_fail['unchanged']}/{pb_total['unchanged']} | "
          f"{pb_fail['slowed']}/{pb_total['slowed']} |")
    print()
    for condition in ("unchanged", "slowed"):
        for test, counts in sorted(per_test[condition].items()):
            print(f"- {condition} {test}: {dict(counts)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
