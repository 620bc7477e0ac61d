"""Offline comparison (``hostperf compare``): a report or baseline against a baseline, or a
report's own paired comparisons with a git revision (``--hostperf-against``). Pure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable

from pytest_hostperf import pairing
from pytest_hostperf.baselines import BaselineError, BaselineFile, read_baseline
from pytest_hostperf.model import Against, Record, Verdict
from pytest_hostperf.report.json import ReportError, read_records
from pytest_hostperf.stats import SessionSummary, summarize
from pytest_hostperf.verdict import Judgement, Policy, judge


class CompareError(Exception):
    """An input file that cannot be compared; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Row:
    test: str
    env: str
    mount: str
    median_s: float
    judgement: Judgement

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict


def _load_current(path: Path) -> list[tuple[Record, SessionSummary]]:
    """The measurements to judge: a report's records, or each test's last saved session."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: cannot read it as JSON ({exc})") from exc
    if isinstance(data, dict) and "results" in data:
        try:
            return [_summarized(path, r) for r in read_records(path) if r.samples]
        except ReportError as exc:
            raise CompareError(str(exc)) from exc
    baseline = _read(path)
    return [(Record(test, baseline.environment, None if mount == "-" else mount, fingerprint_id=baseline.fingerprint_id,
                    samples=saved[-1].samples), saved[-1].summary())
            for test, mounts in baseline.benchmarks.items() for mount, saved in mounts.items() if saved]


def _read(path: Path) -> BaselineFile:
    try:
        return read_baseline(path)
    except BaselineError as exc:
        raise CompareError(str(exc)) from exc


def compare_files(current: Path, baseline: Path, tolerance: float, alpha: float) -> list[Row]:
    """Judge every test of ``current`` that ``baseline`` also has."""
    reference = _read(baseline)
    candidates = _load_current(current)
    matching = [c for c in candidates if c[0].env == reference.environment]
    if not matching:
        envs = sorted({c.env for c, _ in candidates}) or ["nothing measured"]
        raise CompareError(f"{current} has results for {', '.join(envs)}, but {baseline} is a baseline of "
                           f"{reference.environment!r}; pick the baseline file of the same environment")
    comparable = [c for c, _ in matching if reference.history(c.test, c.mount_key)]
    rows = []
    for c, summary in matching:
        same_session = c.fingerprint_id == reference.fingerprint_id
        history = [s.summary() for s in reference.history(c.test, c.mount_key)]
        if current.resolve() == baseline.resolve() or (same_session and history and
                                                       summary == history[-1]):
            history = history[:-1]  # a file compared with itself: its last session vs the rest
        policy = Policy(tolerance, alpha, max(1, len(comparable)))
        rows.append(Row(c.test, c.env, c.mount_key, summary.median_s,
                        judge(summary, history, policy, baseline_name=baseline.name)))
    return rows


def _summarized(path: Path, record: Record) -> tuple[Record, SessionSummary]:
    """A report's record with a summary recomputed from its raw samples, as a session does."""
    try:
        return record, summarize(record.samples)
    except ValueError as exc:
        raise CompareError(f"{path}: {record.test} [{record.env}]: {exc}") from exc


def render(rows: Iterable[Row]) -> list[str]:
    lines = []
    for row in rows:
        ratio = row.judgement.to_baseline
        ratio_text = f"{ratio.ratio:.3f}x [{ratio.ci_low:.3f}, {ratio.ci_high:.3f}]" if ratio else "-"
        mount = "" if row.mount == "-" else f" ({row.mount})"
        lines.append(f"{row.verdict.value:<12} {row.test}{mount} [{row.env}] {ratio_text}")
        if row.verdict not in (Verdict.PASS, Verdict.NO_BASELINE):
            lines.append(f"             {row.judgement.reason}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.verdict.value] = counts.get(row.verdict.value, 0) + 1
    lines.append(", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "nothing to compare")
    return lines


@dataclasses.dataclass(frozen=True)
class PairedRow:
    """One record's paired comparison with REV, judged (again) at a tolerance."""

    test: str
    env: str
    mount: str
    rev: str
    judgement: pairing.PairedJudgement | None   # None: no comparison was made (``reason`` says why)
    reason: str = ""

    @property
    def fails(self) -> bool:
        return self.judgement is not None and Verdict(self.judgement.verdict).fails


def compare_against(current: Path, tolerance: float | None = None) -> list[PairedRow]:
    """The comparisons with REV that a ``--hostperf-against`` report carries, judged at ``tolerance``.

    The pairs' interval does not depend on the tolerance, so a report can be judged
    again at another one (None: each item's own, as the session judged it).
    """
    try:
        records = read_records(current)
    except ReportError as exc:
        raise CompareError(str(exc)) from exc
    compared = [r for r in records if r.against is not None]
    if not compared:
        raise CompareError(f"{current} has no comparison with a git revision: make it with "
                           "pytest --hostperf --hostperf-against=REV --hostperf-json=PATH, or give a baseline "
                           "file to compare with (hostperf compare REPORT BASELINE)")
    rows = []
    for record in compared:
        against = record.against
        assert against is not None
        estimate = _paired_estimate(against)
        judged = None
        if estimate is not None:
            item_tolerance = tolerance if tolerance is not None else (record.tolerance or 0.05)
            judged = pairing.judge(estimate, item_tolerance, against=against.rev[:12])
        rows.append(PairedRow(record.test, record.env, record.mount_key, against.rev, judged,
                              against.reason if judged is None else ""))
    return rows


def _paired_estimate(against: Against) -> pairing.PairedEstimate | None:
    """The stored paired estimate, as the judge takes it; None when no comparison was made."""
    if against.ratio is None or against.ci is None or against.confidence is None:
        return None
    low, high = against.ci
    reached = low > 0 and math.isfinite(high)   # an interval is stored only when the confidence was reached
    p_slower = against.p_value if against.p_value is not None else 0.5
    return pairing.PairedEstimate(
        against.ratio, low, high, against.confidence, against.confidence if reached else 0.0, p_slower,
        against.p_faster if against.p_faster is not None else 1 - p_slower, against.pairs,
        against.spread or 0.0, "stored", against.drift_p, against.batch_ratios)


def render_against(rows: Iterable[PairedRow]) -> list[str]:
    lines = []
    counts: dict[str, int] = {}
    for row in rows:
        mount = "" if row.mount == "-" else f" ({row.mount})"
        verdict = row.judgement.verdict if row.judgement else "no-baseline"
        counts[verdict] = counts.get(verdict, 0) + 1
        if row.judgement is None:
            lines.append(f"{verdict:<12} {row.test}{mount} [{row.env}] {row.reason}")
            continue
        e = row.judgement.estimate
        lines.append(f"{verdict:<12} {row.test}{mount} [{row.env}] {e.ratio:.3f}x REV {row.rev[:12]} "
                     f"[{e.ci_low:.3f}, {e.ci_high:.3f}], {e.pairs} pairs")
        if verdict != "pass":
            lines.append(f"             {row.judgement.reason}")
    lines.append(", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "nothing to compare")
    return lines


def describe_mismatch(a: BaselineFile, b: BaselineFile) -> list[str]:
    from pytest_hostperf.fingerprint import mismatches

    return [f"{key}: {x!r} vs {y!r}" for key, x, y in mismatches(a.match, b.match)]


__all__ = ["CompareError", "PairedRow", "Row", "compare_against", "compare_files", "describe_mismatch", "render",
           "render_against"]
