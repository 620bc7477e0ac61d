"""The terminal table at the end of a session, rendered from the JSON report dict."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pytest_hostperf.report.summary import one_line_reason

COLUMNS = ("test", "env", "median", "vs baseline [CI]", "vs native [CI]", "verdict")
#: Verdicts that get a line of their own under the table (no-baseline items get one
#: line in all, the coverage line).
EXPLAINED = ("regression", "overhead", "unstable", "inconclusive", "improvement")


def format_seconds(seconds: float) -> str:
    """A duration in the largest unit below it, three significant digits: 2.41 ms."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def _ratio_text(ratio: Mapping[str, Any] | None) -> str:
    if not ratio:
        return "-"
    return f"{ratio['ratio']:.2f}x [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]"


def counted(data: Mapping[str, Any]) -> bool:
    """Whether the session counted instructions (``--hostperf-measure=time,instructions``)."""
    return "instructions" in (data.get("settings", {}).get("measure") or ())


def instructions_text(record: Mapping[str, Any]) -> str:
    """``1.23M +3.10%`` (per call, change against the saved count), ``1.23M new``, or ``-``."""
    counts = record.get("instructions")
    if not counts:
        return "-"
    per_call = float(counts["per_call"])
    size = next(f"{per_call / scale:.3g}{unit}" for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1))
                if per_call >= scale or scale == 1)
    ratio = counts.get("ratio_to_baseline")
    change = f" {ratio - 1:+.2%}" if isinstance(ratio, (int, float)) else " new"
    return size + change + (f" ({record['attribution']})" if record.get("attribution") else "")


def _against_text(against: Mapping[str, Any] | None) -> str:
    if not against:
        return "-"
    if against.get("error"):
        return "absent" if against["error"] == "absent" else "fails at REV"
    low, high = against["ci"]
    return f"{against['ratio']:.2f}x [{low:.2f}, {high:.2f}]"


def with_against(data: Mapping[str, Any]) -> bool:
    """Whether the session compared with a git revision (--hostperf-against): one more column."""
    return any(r.get("against") for r in data["results"])



def rows(data: Mapping[str, Any]) -> Iterable[tuple[str, ...]]:
    """One row of cells per record, in :func:`columns` order."""
    with_counts, against = counted(data), with_against(data)
    for r in data["results"]:
        verdict = r["verdict"] or r["outcome"]
        if r.get("accepted") and r["verdict"]:
            verdict += " (accepted)"
        cells = (r["test"], r["target"], _time(r["median_s"]), _ratio_text(r["ratio_to_baseline"]),
                 _ratio_text(r["ratio_to_native"]))
        extra: tuple[str, ...] = (instructions_text(r),) if with_counts else ()
        extra += (_against_text(r.get("against")),) if against else ()
        yield (*cells, *extra, verdict)


def columns(data: Mapping[str, Any]) -> tuple[str, ...]:
    """:data:`COLUMNS`, with "instructions [who]" (when counted) and "vs REV [CI]" (when
    compared with a git revision) before the verdict."""
    extra = (("instructions [who]",) if counted(data) else ()) + (("vs REV [CI]",) if with_against(data) else ())
    return (*COLUMNS[:-1], *extra, COLUMNS[-1])


def render_terminal(data: Mapping[str, Any], verbose: bool = False) -> list[str]:
    """The table, then one line per environment and per item worth a look.

    An item's line is :func:`~pytest_hostperf.report.summary.one_line_reason` (at most 200
    characters); ``verbose`` (pytest's ``-v``) prints the whole reason instead.
    """
    head = columns(data)
    table = [head, *rows(data)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.extend(footer(data))
    lines.extend(item_lines(data, verbose))
    return lines


def explained(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The records that get a line of their own: a verdict worth a look, or a broken item."""
    return [r for r in data["results"]
            if r.get("verdict") in EXPLAINED or (not r.get("verdict") and r.get("outcome") in ("failed", "error"))]


def footer(data: Mapping[str, Any]) -> list[str]:
    """Settings, one line per environment, the coverage line."""
    settings = data["settings"]
    lines = [f"tolerance {settings['tolerance']:.0%}, alpha {settings['alpha']} over "
             f"{settings['comparisons']} comparisons (Bonferroni); baselines in {settings['baselines']}"]
    revs = sorted({r["against"]["rev"] for r in data["results"] if r.get("against")})
    if revs:
        lines.append(f"REV = {', '.join(rev[:12] for rev in revs)} (--hostperf-against): working tree / REV from "
                     "random-order pairs in the same session; this comparison gates")
    for name, env in data["environments"].items():
        parts = [f"{name}:"]
        if env["error"]:
            parts.append(f"unavailable: {env['error'].splitlines()[0]}")
        else:
            if env["startup_s"] is not None:
                parts.append(f"ready in {env['startup_s']:.1f} s")
            if env["orchestration_ms_median"] is not None:
                parts.append(f"orchestration {env['orchestration_ms_median']:.1f} ms/test (median)")
            parts.append(f"fingerprint {env['fingerprint_id']}")
        if env.get("baseline_error"):
            parts.append(f"BASELINE ERROR: {env['baseline_error']}")
        lines.append(" ".join(parts))
    lines.extend(counting_lines(data))
    coverage = coverage_line(data)
    if coverage:
        lines.append(coverage)
    return lines


def counting_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per environment of the instruction counts: its agent's start, or why none."""
    if not counted(data):
        return []
    lines = []
    tolerance = data["settings"].get("instructions_tolerance")
    for env, info in (data.get("counting") or {}).items():
        if info.get("refused"):
            lines.append(f"instructions {env}: not counted, timings only: {info['refused']}")
        elif info.get("startup_s") is not None:
            lines.append(f"instructions {env}: counted under valgrind (agent ready in {info['startup_s']:.1f} s), "
                         f"tolerance {tolerance:.1%}" if isinstance(tolerance, float) else "")
    return [line for line in lines if line]


def item_lines(data: Mapping[str, Any], verbose: bool = False) -> list[str]:
    """One line per item worth a look; ``verbose`` gives its whole reason instead."""
    lines = []
    for r in explained(data):
        label = (r.get("verdict") or r.get("outcome") or "").upper()
        why = " ".join(str(r.get("reason") or "").split()) if verbose else one_line_reason(r)
        lines.append(f"{label} {r['item']}: {why}")
    return lines


def coverage_line(data: Mapping[str, Any]) -> str:
    """One line: how many measured items the gate did not cover, and why (per environment)."""
    uncovered = [r for r in data["results"] if r["verdict"] == "no-baseline"]
    if not uncovered:
        return ""
    judged = [r for r in data["results"] if r["verdict"]]
    envs = dict.fromkeys(r["env"] for r in uncovered)
    why = "; ".join(f"{env}: {data['environments'].get(env, {}).get('uncovered') or 'no saved baseline'}"
                    for env in envs)
    strict = " (--hostperf-strict: these fail)" if data["settings"].get("strict") else ""
    return f"NOT GATED: {len(uncovered)} of {len(judged)} items have no baseline{strict}: {why}"
