"""Two processes per side, rotated batch by batch: can the drift guard see a slow process?

benchmarks/paired_prototype.py run 5 found differences that belong to one *process* for
its whole life: one reference worker ran 30-50% slower than its candidates in every
comparison it took part in (session 14, arith), another 7% (session 16, strings), steady
from the first batch of pairs to the last. Pairs cannot cancel that and the drift guard,
which compares consecutive batches, cannot see it. With two processes per side, taking
turns by batch (batch j: reference process j % 2, candidate process (j // 2) % 2, so all
four combinations appear), a slow process makes some batches differ from the others,
which the guard does see.

Each comparison starts fresh processes. Modes, alternated: ``single`` (one process per
side) and ``rotated`` (two per side); A/A and B = A + 10%. Example:

    python3 benchmarks/paired_rotation.py --sessions 20
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

from paired_prototype import BASE_SIZE, WORKLOADS, Worker, calibrate, confidence, experiment, native, record, uptime  # noqa: E402
from paired_summary import _counts, _excludes, _median, _width  # noqa: E402

from pytest_hostperf import pairing  # noqa: E402


def rotated_rounds(references: list[Worker], candidates: list[Worker], iterations: int, pairs: int,
                   seed: str) -> dict[str, list[float]]:
    """Pairs in time order; batch j of the drift guard's batches uses reference j % 2 and
    candidate (j // 2) % 2 (with one process per side, always that one)."""
    times: dict[str, list[float]] = {"reference": [], "candidate": [], "reference_cpu": [], "candidate_cpu": []}
    bounds = np.cumsum([len(b) for b in np.array_split(np.arange(pairs), pairing.DRIFT_BATCHES)])
    for index, order in enumerate(pairing.PairSchedule(pairs, seed)):
        batch = int(np.searchsorted(bounds, index, side="right"))
        workers = {"reference": references[batch % len(references)],
                   "candidate": candidates[(batch // 2) % len(candidates)]}
        for side in order:
            times[side].append(workers[side].time(iterations))
            times[side + "_cpu"].append(workers[side].last_cpu)
    return times


def summary(rows: list[dict]) -> list[str]:
    out = ["mode     clock slowdown  n   at 5%: reg imp inc uns pass | at 2%: reg imp inc uns pass | "
           "excl. 1.0  CI width  ratio [min-max]"]
    for mode in ("single", "rotated"):
        for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
            for slowdown in (0.0, 0.10):
                group = [r for r in rows if r["mode"] == mode and r["slowdown"] == slowdown]
                ratios = [r[prefix + "ratio"] for r in group]
                out.append(f"{mode:<8} {clock:<5} {slowdown:>4.0%} {len(group):>4}   "
                           f"{_counts(group, prefix + 'verdict_5')} | {_counts(group, prefix + 'verdict_2')} | "
                           f"{sum(_excludes(r, 1.0, prefix + 'ci') for r in group) if slowdown == 0 else '-':>5}  "
                           f"{_median(_width(r, prefix + 'ci') for r in group):>7.2%}  {_median(ratios):.3f} "
                           f"[{min(ratios):.3f}-{max(ratios):.3f}]")
    return out


def main() -> int:
    args, lines = experiment(__doc__, "paired rotation (two processes per side)", 20, "paired-rotation.json")
    conf = confidence(len(WORKLOADS))
    rows: list[dict] = []
    for session in range(args.sessions):
        for workload in WORKLOADS:
            for mode in ("single", "rotated") if session % 2 else ("rotated", "single"):
                for slowdown in (0.0, 0.10):
                    count = 2 if mode == "rotated" else 1
                    references = [native(workload, BASE_SIZE) for _ in range(count)]
                    candidates = [native(workload, round(BASE_SIZE * (1 + slowdown))) for _ in range(count)]
                    try:
                        iterations = calibrate(references[0], args.round_ms / 1e3)
                        for worker in references[1:] + candidates:
                            worker.time(iterations)  # a first round in no measurement
                        times = rotated_rounds(references, candidates, iterations, args.pairs,
                                               f"rotation-{session}-{workload}-{mode}-{slowdown}")
                        rows.append(record(times, conf, mode=mode, session=session, workload=workload,
                                           slowdown=slowdown, keep_pairs=True))
                    finally:
                        for worker in references + candidates:
                            worker.close()
        print(f"  session {session + 1}/{args.sessions}, load {os.getloadavg()[0]:.2f}", flush=True)
        args.json.write_text(json.dumps(rows))
    lines.append(f"# after: {uptime()}")
    lines.append(f"## rotation: {args.sessions} sessions x {len(WORKLOADS)} workloads, {args.pairs} pairs of "
                 f"~{args.round_ms:g} ms rounds, fresh processes per comparison, interval at {conf:.2%} "
                 "(excl.: A/A intervals that miss 1.0)")
    lines += summary(rows)
    print("\n".join(lines[3:]))
    with args.log.open("a") as out:
        out.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
