"""Does a probe pair, measured by the same two workers, see what the pairs cannot?

benchmarks/paired_prototype.py found that two processes of identical code, alternated
every few milliseconds, can still read 5-30% apart over a whole comparison on this
shared machine: a difference that lasts the comparison, which the per-pair interval
cannot see. If that difference belongs to the *processes at that moment* (where they
run, what shares their core) rather than to the code, the same two workers timing a
fixed probe workload at the same moments read the same difference, and dividing it out
(per pair: d = ln(cand/ref) - ln(cand_probe/ref_probe)) removes it.

Each comparison alternates a test pair and a probe pair (both in random order within
the pair), A/A and B = A + 10%; it logs the raw and the probe-corrected verdicts and the
correlation between the A/A ratios and the probe ratios. Example:

    python3 benchmarks/paired_control.py --sessions 10
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

from paired_prototype import BASE_SIZE, WORKLOADS, Worker, calibrate, confidence, experiment, native, uptime  # noqa: E402

from pytest_hostperf import pairing  # noqa: E402


def controlled_rounds(reference: Worker, candidate: Worker, iterations: int, probe_iterations: int,
                      pairs: int, seed: str) -> dict[str, list[float]]:
    """Test pairs and probe pairs, alternating; keys side, side_cpu, probe_side, probe_side_cpu."""
    times: dict[str, list[float]] = {}
    workers = {"reference": reference, "candidate": candidate}
    tests, probes = pairing.PairSchedule(pairs, seed + "-test"), pairing.PairSchedule(pairs, seed + "-probe")
    for test_order, probe_order in zip(tests, probes):
        for prefix, order, command, count in (("", test_order, "run", iterations),
                                              ("probe_", probe_order, "probe", probe_iterations)):
            for side in order:
                times.setdefault(prefix + side, []).append(workers[side].time(count, command))
                times.setdefault(prefix + side + "_cpu", []).append(workers[side].last_cpu)
    return times


def judged(d: np.ndarray, conf: float) -> dict:
    e = pairing.estimate_log_ratios(d, conf)
    return {"ratio": e.ratio, "ci": [e.ci_low, e.ci_high], "spread": e.spread,
            "verdict_5": pairing.judge(e, 0.05).verdict, "verdict_2": pairing.judge(e, 0.02).verdict}


def row(times: dict[str, list[float]], conf: float, **extra: object) -> dict:
    out = dict(extra)
    for clock, suffix in (("wall", ""), ("cpu", "_cpu")):
        test = pairing.log_ratios(times["reference" + suffix], times["candidate" + suffix])
        probe = pairing.log_ratios(times["probe_reference" + suffix], times["probe_candidate" + suffix])
        out[clock] = {"raw": judged(test, conf), "probe": judged(probe, conf), "corrected": judged(test - probe, conf)}
    return out


def summary(rows: list[dict]) -> list[str]:
    lines = ["clock  estimate   | A/A: excl. 1.0  reg  imp  uns  (at 2%: reg imp)  CI width  ratio [min-max] | "
             "10%: reg  uns  CI width"]
    for clock in ("wall", "cpu"):
        for kind in ("raw", "corrected"):
            same = [r[clock][kind] for r in rows if r["slowdown"] == 0.0]
            slower = [r[clock][kind] for r in rows if r["slowdown"] == 0.10]

            def count(group: list[dict], verdict: str, key: str = "verdict_5") -> int:
                return sum(g[key] == verdict for g in group)

            ratios = [g["ratio"] for g in same]
            lines.append(
                f"{clock:<5}  {kind:<10} | {sum(not g['ci'][0] <= 1 <= g['ci'][1] for g in same):>3}/{len(same)}"
                f"  {count(same, 'regression'):>3}  {count(same, 'improvement'):>3}  {count(same, 'unstable'):>3}"
                f"  ({count(same, 'regression', 'verdict_2'):>2} {count(same, 'improvement', 'verdict_2'):>2})"
                f"  {statistics.median(g['ci'][1] / g['ci'][0] - 1 for g in same):>7.2%}"
                f"  {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] |"
                f"  {count(slower, 'regression'):>3}/{len(slower)}  {count(slower, 'unstable'):>3}"
                f"  {statistics.median(g['ci'][1] / g['ci'][0] - 1 for g in slower):>7.2%}")
        same = [r[clock] for r in rows if r["slowdown"] == 0.0]
        test, probe = (np.log([s[k]["ratio"] for s in same]) for k in ("raw", "probe"))
        lines.append(f"{clock}: A/A log ratio vs probe log ratio over {len(same)} comparisons: correlation "
                     f"{float(np.corrcoef(test, probe)[0, 1]):+.2f}, SD {np.std(test, ddof=1):.2%} raw, "
                     f"{np.std(test - probe, ddof=1):.2%} after dividing by the probe")
    return lines


def main() -> int:
    args, lines = experiment(__doc__, "paired control (probe pairs)", 10, "paired-control.json")
    conf = confidence(len(WORKLOADS))
    rows: list[dict] = []
    for session in range(args.sessions):
        for workload in WORKLOADS:
            reference = native(workload, BASE_SIZE)
            candidates = {s: native(workload, round(BASE_SIZE * (1 + s))) for s in (0.0, 0.10)}
            try:
                iterations = calibrate(reference, args.round_ms / 1e3)
                probe_iterations = calibrate(reference, args.round_ms / 1e3, "probe")
                for slowdown, candidate in candidates.items():
                    times = controlled_rounds(reference, candidate, iterations, probe_iterations, args.pairs,
                                              f"control-{session}-{workload}-{slowdown}")
                    rows.append(row(times, conf, session=session, workload=workload, slowdown=slowdown))
            finally:
                for worker in (reference, *candidates.values()):
                    worker.close()
        print(f"  session {session + 1}/{args.sessions}, load {os.getloadavg()[0]:.2f}", flush=True)
        args.json.write_text(json.dumps(rows))
    lines.append(f"# after: {uptime()}")
    lines.append(f"## control: {args.sessions} sessions x {len(WORKLOADS)} workloads, {args.pairs} test pairs "
                 f"+ {args.pairs} probe pairs of ~{args.round_ms:g} ms rounds, Wilcoxon interval at {conf:.2%}")
    lines += summary(rows)
    print("\n".join(lines[-(len(lines) - 3):]))
    with args.log.open("a") as out:
        out.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
