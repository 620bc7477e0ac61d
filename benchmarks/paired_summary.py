"""Tables of benchmarks/paired_prototype.py's results (its rows, or its JSON file).

    python3 benchmarks/paired_summary.py benchmarks/results/paired-prototype-run4-2ms-pairs.json
    python3 benchmarks/paired_summary.py --reestimate benchmarks/results/paired-prototype-run4-2ms-pairs.json

``--reestimate`` judges the stored pairs again with pytest_hostperf.pairing as it is now.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

VERDICTS = ("regression", "improvement", "inconclusive", "unstable", "pass")
BUDGET = 1.10  # the overhead budget of issue #10's example


def _counts(rows: list[dict], key: str) -> str:
    seen = Counter(r[key] for r in rows)
    return " ".join(f"{seen[v]:>3}" for v in VERDICTS)


def _width(row: dict, key: str = "ci") -> float:
    low, high = row[key]
    return high / low - 1 if low > 0 else float("inf")


def _excludes(row: dict, value: float, key: str = "ci") -> bool:
    low, high = row[key]
    return not low <= value <= high


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _by(rows: list[dict], **match: object) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _detect(rows: list[dict], pairs: int, round_ms: float, confidence: float) -> list[str]:
    sessions = len({r["session"] for r in rows})
    out = [f"## detect: {sessions} sessions x {len({r['workload'] for r in rows})} workloads, {pairs} pairs "
           f"of ~{round_ms:g} ms rounds, Wilcoxon interval at {confidence:.2%}",
           "clock slowdown  n   at 5% tolerance: reg imp inc uns pass | at 2%: reg imp inc uns pass | "
           "ratio: median [min-max]  median CI width  median spread"]
    for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
        for slowdown in sorted({r["slowdown"] for r in rows}):
            group = _by(rows, slowdown=slowdown)
            ratios = [r[prefix + "ratio"] for r in group]
            out.append(f"{clock:<5} {slowdown:>4.0%} {len(group):>4}   {_counts(group, prefix + 'verdict_5')}        | "
                       f"{_counts(group, prefix + 'verdict_2')}  | {_median(ratios):.4f} "
                       f"[{min(ratios):.4f}-{max(ratios):.4f}]  {_median(_width(r, prefix + 'ci') for r in group):.2%}"
                       f"  {_median(r[prefix + 'spread'] for r in group):.2%}")
    out.append("per workload, A/A ratio across sessions (a process's own speed is inside each session's "
               "comparison but not in its interval):")
    for workload in sorted({r["workload"] for r in rows}):
        group = _by(rows, slowdown=0.0, workload=workload)
        ratios = [r["ratio"] for r in group]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        out.append(f"  {workload:<8} median {_median(ratios):.4f}, SD {sd:.2%}, median CI half-width "
                   f"{_median(_width(r) for r in group) / 2:.2%}; CI excludes 1.0 in "
                   f"{sum(_excludes(r, 1.0) for r in group)}/{len(group)}")
    out.append("Wilcoxon interval vs moving-block bootstrap (blocks of 10 pairs) of the same pairs:")
    for slowdown in (0.0, 0.10):
        group = [r for r in _by(rows, slowdown=slowdown) if "boot_ci" in r]
        if not group:
            continue
        truth = {w: _median(r["ratio"] for r in _by(group, workload=w)) for w in {r["workload"] for r in group}}
        lag = [r["lag1"] for r in group]
        significant = sum(abs(r["lag1"]) > 2 / r["pairs"] ** 0.5 for r in group)
        out.append(
            f"  {slowdown:.0%}: width bootstrap/Wilcoxon median "
            f"{_median(_width(r, 'boot_ci') / _width(r) for r in group):.2f}; "
            f"misses the all-session median ratio: Wilcoxon {sum(_excludes(r, truth[r['workload']]) for r in group)}"
            f"/{len(group)}, bootstrap {sum(_excludes(r, truth[r['workload']], 'boot_ci') for r in group)}/{len(group)}"
            + (f"; excludes 1.0: Wilcoxon {sum(_excludes(r, 1.0) for r in group)}, bootstrap "
               f"{sum(_excludes(r, 1.0, 'boot_ci') for r in group)}" if slowdown == 0 else "")
            + f"; lag-1 autocorrelation median {_median(lag):+.3f}, |r| > 2/sqrt(n) in {significant}/{len(group)}")
    return out


def _sweep(rows: list[dict]) -> list[str]:
    out = ["## sweep: round length at a fixed time budget (A/A and a 10% slowdown)",
           "round  pairs | A/A: CI width  excl. 1.0  regressions at 5% | 10%: median ratio  CI width  "
           "regressions at 5%  unstable"]
    for round_ms in sorted({r["round_ms"] for r in rows}):
        same, slower = _by(rows, round_ms=round_ms, slowdown=0.0), _by(rows, round_ms=round_ms, slowdown=0.10)
        out.append(
            f"{round_ms:>3} ms {_median(r['pairs'] for r in same):>5.0f} | {_median(_width(r) for r in same):>7.2%}"
            f"   {sum(_excludes(r, 1.0) for r in same):>3}/{len(same)}"
            f"   {sum(r['verdict_5'] == 'regression' for r in same):>3}/{len(same)}"
            f"          | {_median(r['ratio'] for r in slower):.4f}  {_median(_width(r) for r in slower):>7.2%}"
            f"   {sum(r['verdict_5'] == 'regression' for r in slower):>3}/{len(slower)}"
            f"   {sum(r['verdict_5'] == 'unstable' for r in slower):>3}")
    return out


def _overhead(rows: list[dict]) -> list[str]:
    out = [f"## overhead: ratio to native, today's 3 blocks (bootstrap of medians) vs pairs, same workers, "
           f"budget {BUDGET:.2f}",
           "env     method  n   median ratio [min-max]    CI width  CI excl. 1.0  misses median  "
           f"ci_low > {BUDGET:.2f}"]
    for env in sorted({r["env"] for r in rows}):
        for method in ("blocks", "pairs"):
            group = _by(rows, env=env, method=method)
            if not group:
                continue
            ratios = [r["ratio"] for r in group]
            centre = _median(ratios)
            out.append(f"{env:<7} {method:<7} {len(group):>3} {centre:.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
                       f"   {_median(_width(r) for r in group):>7.2%}  {sum(_excludes(r, 1.0) for r in group):>5}"
                       f"        {sum(_excludes(r, centre) for r in group):>5}"
                       f"        {sum(r['ci'][0] > BUDGET for r in group):>5}"
                       f"   within 1.00+-0.05: {sum(0.95 <= v <= 1.05 for v in ratios)}/{len(ratios)}")
            if method == "pairs":
                cpu = [r["cpu_ratio"] for r in group]
                out.append(f"{env:<7} pairs, CPU time: {_median(cpu):.3f} [{min(cpu):.3f}-{max(cpu):.3f}], "
                           f"excl. 1.0 {sum(_excludes(r, 1.0, 'cpu_ci') for r in group)}, ci_low > {BUDGET:.2f} "
                           f"{sum(r['cpu_ci'][0] > BUDGET for r in group)}, within 1.00+-0.05: "
                           f"{sum(0.95 <= v <= 1.05 for v in cpu)}/{len(cpu)}")
    return out


def _pinning(rows: list[dict]) -> list[str]:
    out = ["## pinning: workers free to move between CPUs vs all confined to one CPU",
           "placement clock | A/A native: excl. 1.0  reg  imp  uns  ratio [min-max]  CI width | 10%: reg  uns  "
           "CI width | docker/native: within 1.00+-0.05  excl. 1.0  ci_low > 1.10  ratio [min-max]"]
    for placement in ("free", "one-cpu"):
        for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
            same = _by(rows, placement=placement, env="native", slowdown=0.0)
            slower = _by(rows, placement=placement, env="native", slowdown=0.10)
            docker = _by(rows, placement=placement, env="docker")
            if not same:
                continue
            ratios = [r[prefix + "ratio"] for r in same]
            count = lambda group, v, key=prefix + "verdict_5": sum(r[key] == v for r in group)  # noqa: E731
            line = (f"{placement:<8} {clock:<5} | {sum(_excludes(r, 1.0, prefix + 'ci') for r in same):>3}/{len(same)}"
                    f"  {count(same, 'regression'):>3}  {count(same, 'improvement'):>3}  {count(same, 'unstable'):>3}"
                    f"  {_median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
                    f"  {_median(_width(r, prefix + 'ci') for r in same):>6.2%} | {count(slower, 'regression'):>3}/"
                    f"{len(slower)}  {count(slower, 'unstable'):>3}"
                    f"  {_median(_width(r, prefix + 'ci') for r in slower):>6.2%}")
            if docker:
                values = [r[prefix + "ratio"] for r in docker]
                line += (f" | {sum(0.95 <= v <= 1.05 for v in values):>3}/{len(values)}"
                         f"  {sum(_excludes(r, 1.0, prefix + 'ci') for r in docker):>3}"
                         f"  {sum(r[prefix + 'ci'][0] > BUDGET for r in docker):>3}"
                         f"  {_median(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
            out.append(line)
    return out


def summarize(rows: list[dict], pairs: int, round_ms: float, confidence: float) -> list[str]:
    out: list[str] = []
    for name, make in (("detect", lambda g: _detect(g, pairs, round_ms, confidence)),
                       ("sweep", _sweep), ("pinning", _pinning), ("overhead", _overhead)):
        group = [r for r in rows if r["experiment"] == name]
        if group:
            out += make(group)
    return out


def reestimate(rows: list[dict], confidence: float) -> list[str]:
    """Verdicts of the stored pairs (A/A and 10%) judged again by today's pairing module."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pytest_hostperf import pairing  # noqa: PLC0415

    out = [f"## the stored pairs judged by pytest_hostperf.pairing as it is now (drift guard: "
           f"{pairing.DRIFT_BATCHES} batches, Kruskal-Wallis p < {pairing.DRIFT_ALPHA})",
           "clock slowdown  n   at 5%: reg imp inc uns pass | at 2%: reg imp inc uns pass | "
           "excl. 1.0  widened"]
    for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
        for slowdown in (0.0, 0.10):
            group = [r for r in rows if r.get("slowdown") == slowdown and prefix + "log_ratios" in r]
            if not group:
                continue
            judged = []
            for r in group:
                e = pairing.estimate_log_ratios(r[prefix + "log_ratios"], confidence)
                judged.append({"verdict_5": pairing.judge(e, 0.05).verdict, "verdict_2": pairing.judge(e, 0.02).verdict,
                               "ci": [e.ci_low, e.ci_high], "widened": e.widened})
            out.append(f"{clock:<5} {slowdown:>4.0%} {len(group):>4}   {_counts(judged, 'verdict_5')} | "
                       f"{_counts(judged, 'verdict_2')} | {sum(_excludes(j, 1.0) for j in judged):>5}"
                       f"  {sum(j['widened'] for j in judged):>5}")
    return out


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[-1]).read_text())
    if sys.argv[1] == "--reestimate":
        print("\n".join(reestimate(data, 1 - 2 * 0.01 / 3)))
    else:
        pairs = {r["pairs"] for r in data if "pairs" in r}
        print("\n".join(summarize(data, max(pairs) if pairs else 0, 0.0, 1 - 2 * 0.01 / 3)))
