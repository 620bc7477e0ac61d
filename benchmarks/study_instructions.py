"""A 3% CPU slowdown: caught by instruction counts? Side by side with the wall-time gate.

Runs ``benchmarks/study_project`` (six CPU-bound and two sleep-bound workloads;
``HOSTPERF_STUDY_SLOWDOWN=1.03`` makes each do 3% more work) in fresh sessions:

1. baselines: one counting session, and ``--baseline-sessions`` ``pytest --hostperf
   --hostperf-save`` sessions for the time gate (as benchmarks/study_false_alarms.py);
2. ``--sessions`` rounds, each: a counting session unchanged and one slowed, judged by
   :func:`pytest_hostperf.counting.judge_instructions` (1% tolerance) against the
   baseline counts; a ``pytest --hostperf`` session unchanged and one slowed, judged by
   hostperf's time gate (the project's default 5% tolerance); the attribution
   (:func:`pytest_hostperf.counting.attribute`) of each slowed test.

    python3 benchmarks/study_instructions.py --sessions 20 --baseline-sessions 5 \\
        --out benchmarks/results/study-instructions.json | tee benchmarks/results/study-instructions.log
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from counting_agent import CountingAgent
from study_false_alarms import PROJECT, hostperf_session

from pytest_hostperf.counting import attribute, judge_instructions

FILES = ["tests/test_workloads.py"]


def count_session(workdir: Path, slowdown: float) -> dict[str, dict[str, Any]]:
    """Instruction counts of every workload in a fresh counting agent."""
    with CountingAgent.native(workdir, FILES, extra_env={"HOSTPERF_STUDY_SLOWDOWN": str(slowdown)}) as agent:
        counts = {}
        for nodeid in agent.ready["collected"]:
            answer = agent.count(nodeid)
            if answer.get("instructions") is None:
                raise SystemExit(f"{nodeid} not counted: {answer.get('instructions_reason') or answer}")
            counts[nodeid.split("::")[-1]] = answer["instructions"]
    return counts


def time_records(workdir: Path, slowdown: float, report: Path) -> dict[str, dict[str, Any]]:
    """hostperf's verdict and ratio CI per test for one ``pytest --hostperf`` session."""
    hostperf_session(workdir, slowdown, False, report)
    data = json.loads(report.read_text())
    return {r["test"].split("::")[-1]: r for r in data["results"]}


def _time_ci(record: dict[str, Any]) -> tuple[float, float] | None:
    ratio = record.get("ratio_to_baseline")
    if not isinstance(ratio, dict) or ratio.get("ci_low") is None:
        return None
    return float(ratio["ci_low"]), float(ratio["ci_high"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--baseline-sessions", type=int, default=5)
    parser.add_argument("--slowdown", type=float, default=1.03)
    parser.add_argument("--tolerance", type=float, default=0.01, help="instruction tolerance")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    print(f"# study: x{args.slowdown} slowdown, {args.sessions} sessions, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="hostperf-h5-study-"))
    shutil.copytree(PROJECT, workdir, dirs_exist_ok=True)
    started = time.time()
    verdicts: dict[str, dict[str, collections.Counter[str]]] = {
        f"{measure} {condition}": collections.defaultdict(collections.Counter)
        for measure in ("count", "time") for condition in ("unchanged", "slowed")}
    attributions: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    raw: list[dict[str, Any]] = []
    try:
        baseline = count_session(workdir, 1.0)
        for i in range(args.baseline_sessions):
            hostperf_session(workdir, 1.0, True, workdir / f"save-{i}.json")
        print(f"baselines saved ({(time.time() - started) / 60:.1f} min)", flush=True)
        for i in range(args.sessions):
            session: dict[str, Any] = {}
            for condition, factor in (("unchanged", 1.0), ("slowed", args.slowdown)):
                counts = count_session(workdir, factor)
                times = time_records(workdir, factor, workdir / f"{condition}-{i}.json")
                session[condition] = {"counts": counts,
                                      "time_verdicts": {t: r.get("verdict") for t, r in times.items()}}
                for test, count in counts.items():
                    base = baseline[test]
                    judged = judge_instructions(count["per_call"], base["per_call"], noise=count["noise"],
                                                baseline_noise=base["noise"], tolerance=args.tolerance)
                    verdicts[f"count {condition}"][test][judged.verdict] += 1
                    record = times.get(test, {})
                    time_verdict = str(record.get("verdict") or record.get("outcome"))
                    verdicts[f"time {condition}"][test][time_verdict] += 1
                    if condition == "slowed":
                        attributions[test][attribute(judged, time_verdict, _time_ci(record))] += 1
            raw.append(session)
            print(f"round {i + 1}/{args.sessions} ({(time.time() - started) / 60:.1f} min)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    tests = sorted(baseline)
    print(f"\n## x{args.slowdown} slowdown: instruction counts (tolerance {100 * args.tolerance:g}%) vs time "
          f"(hostperf, {args.baseline_sessions} saved sessions), {args.sessions} rounds, "
          f"{(time.time() - started) / 60:.0f} min\n")
    print("| test | per call | count: unchanged flagged | count: slowed flagged | time: unchanged flagged | "
          "time: slowed flagged | attribution (slowed) |")
    print("|---|---|---|---|---|---|---|")
    for test in tests:
        cells = []
        for key in ("count unchanged", "count slowed", "time unchanged", "time slowed"):
            counter = verdicts[key][test]
            cells.append(f"{counter['regression']}/{sum(counter.values())} {dict(counter)}")
        print(f"| {test} | {baseline[test]['per_call']:,.0f} | " + " | ".join(cells)
              + f" | {dict(attributions[test])} |")
    if args.out:
        args.out.write_text(json.dumps({"baseline": baseline, "rounds": raw,
                                        "verdicts": {k: {t: dict(c) for t, c in v.items()}
                                                     for k, v in verdicts.items()},
                                        "attributions": {t: dict(c) for t, c in attributions.items()}},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
