"""Offline comparison (``hostperf compare``): a report or baseline against a baseline. Pure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from pytest_hostperf.baselines import BaselineError, BaselineFile, read_baseline
from pytest_hostperf.stats import SessionSummary, summarize
from pytest_hostperf.verdict import Judgement, Policy, Verdict, judge


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


@dataclasses.dataclass(frozen=True)
class _Current:
    env: str
    test: str
    mount: str
    summary: SessionSummary
    fingerprint_id: str | None


def _load_current(path: Path) -> list[_Current]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: cannot read it as JSON ({exc})") from exc
    if isinstance(data, dict) and "results" in data:
        if data.get("tool") != "pytest-hostperf":
            raise CompareError(f"{path}: not a pytest-hostperf report (make one with --hostperf-json=PATH)")
        rows = []
        for index, record in enumerate(data["results"]):
            if not record.get("samples"):
                continue
            try:
                rows.append(_Current(record["env"], record["test"], record.get("mount") or "-",
                                     summarize(record["samples"]), record.get("fingerprint_id")))
            except (KeyError, TypeError, ValueError) as exc:
                raise CompareError(f"{path}: result #{index} is malformed ({type(exc).__name__}: {exc}); "
                                   "regenerate the report with --hostperf-json") from exc
        return rows
    baseline = _read(path)
    return [
        _Current(baseline.environment, test, mount, sessions[-1].summary(), baseline.fingerprint_id)
        for test, mounts in baseline.benchmarks.items() for mount, sessions in mounts.items() if sessions
    ]


def _read(path: Path) -> BaselineFile:
    try:
        return read_baseline(path)
    except BaselineError as exc:
        raise CompareError(str(exc)) from exc


def compare_files(current: Path, baseline: Path, tolerance: float, alpha: float) -> list[Row]:
    """Judge every test of ``current`` that ``baseline`` also has."""
    reference = _read(baseline)
    candidates = _load_current(current)
    matching = [c for c in candidates if c.env == reference.environment]
    if not matching:
        envs = sorted({c.env for c in candidates}) or ["nothing measured"]
        raise CompareError(f"{current} has results for {', '.join(envs)}, but {baseline} is a baseline of "
                           f"{reference.environment!r}; pick the baseline file of the same environment")
    comparable = [c for c in matching if reference.history(c.test, c.mount)]
    rows = []
    for c in matching:
        same_session = c.fingerprint_id == reference.fingerprint_id
        history = [s.summary() for s in reference.history(c.test, c.mount)]
        if current.resolve() == baseline.resolve() or (same_session and history and
                                                       c.summary == history[-1]):
            history = history[:-1]  # a file compared with itself: its last session vs the rest
        policy = Policy(tolerance, alpha, max(1, len(comparable)))
        rows.append(Row(c.test, c.env, c.mount, c.summary.median_s,
                        judge(c.summary, history, policy, baseline_name=baseline.name)))
    return rows


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


def describe_mismatch(a: BaselineFile, b: BaselineFile) -> list[str]:
    from pytest_hostperf.fingerprint import mismatches

    return [f"{key}: {x!r} vs {y!r}" for key, x, y in mismatches(a.match, b.match)]


__all__ = ["CompareError", "Row", "compare_files", "render", "describe_mismatch"]
