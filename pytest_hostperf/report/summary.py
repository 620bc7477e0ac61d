"""What a report says before any number is read: verdict counts, one line per problem,
the environments, and what the gate did not cover. Pure: stdlib only, no pytest.

Everything here reads the JSON report dict (``--hostperf-json``; see DESIGN.md "JSON
report") so the HTML report, the terminal summary and the Markdown summary can share it.
Fields added by later features (``against``, ``instructions``, ``attribution``, a
record's own ``tolerance`` and ``max_overhead``) are used when present and skipped when not.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

#: Longest line :func:`one_line_reason` returns: a terminal line, a Markdown list item.
MAX_REASON = 200
#: Verdicts that fail the test item.
FAILING = ("regression", "overhead")
#: Outcomes of the test body itself (when no verdict could be reached).
BROKEN = ("failed", "error")
#: Display order of every status a record can have.
STATUS_ORDER = ("regression", "overhead", "failed", "error", "unstable", "inconclusive", "no-baseline",
                "skipped", "improvement", "pass")

Record = Mapping[str, Any]


def status(record: Record) -> str:
    """The verdict, or the run outcome when there is none (failed, error, skipped)."""
    return str(record.get("verdict") or record.get("outcome") or "unknown")


def is_failure(record: Record) -> bool:
    return status(record) in FAILING or record.get("outcome") in BROKEN


def ratio_interval(ratio: Mapping[str, Any] | None) -> tuple[float, float, float] | None:
    """``(ratio, low, high)`` from either shape in use: ``ci_low``/``ci_high`` or ``ci: [lo, hi]``."""
    if not ratio or ratio.get("ratio") is None:
        return None
    if "ci" in ratio and ratio["ci"]:
        low, high = ratio["ci"]
    else:
        low, high = ratio.get("ci_low"), ratio.get("ci_high")
    if low is None or high is None:
        low = high = ratio["ratio"]
    return float(ratio["ratio"]), float(low), float(high)


def _interval_text(ratio: Mapping[str, Any] | None, versus: str, digits: int = 3) -> str | None:
    interval = ratio_interval(ratio)
    if interval is None:
        return None
    value, low, high = interval
    return f"{value:.{digits}f}x {versus} [{low:.{digits}f}, {high:.{digits}f}]"


def _p_text(p_value: Any) -> str:
    return f", p={p_value:.2g}" if isinstance(p_value, (int, float)) else ""


def shorten(text: str, limit: int = MAX_REASON) -> str:
    """One line of at most ``limit`` characters; a cut is marked with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def one_line_reason(record: Record) -> str:
    """Why a record has its status, in one line of at most 200 characters.

    Built from the record's numbers (ratio, interval, p-value, sessions) rather than by
    cutting the long ``reason``, which stays in the JSON, the HTML details and ``-v``.
    """
    verdict = status(record)
    against = _against_text(record)
    counts = record.get("instructions")
    if verdict == "regression" and isinstance(counts, Mapping) and counts.get("verdict") == "regression":
        time = _interval_text(record.get("ratio_to_baseline"), "baseline") or "not judged"
        return shorten(f"regression: {_instructions_text(record)}; time {time}")
    if verdict in ("regression", "improvement", "inconclusive") and against:
        text = f"{verdict}: {against}"
    elif verdict in ("regression", "improvement"):
        interval = _interval_text(record.get("ratio_to_baseline"), "baseline")
        text = f"{verdict}: {interval}{_p_text(record.get('p_value'))}"
        if isinstance(record.get("tolerance"), (int, float)):
            text += f", tolerance {record['tolerance']:.0%}"
    elif verdict == "inconclusive":
        text = (f"inconclusive: {_interval_text(record.get('ratio_to_baseline'), 'baseline')}, not proven "
                f"({record.get('baseline_sessions') or 0} baseline sessions; save more with --hostperf-save)")
    elif verdict == "overhead":
        budget = record.get("max_overhead")
        over = f"over the {budget:.2f}x budget" if isinstance(budget, (int, float)) else "over its budget"
        text = f"overhead: {_interval_text(record.get('ratio_to_native'), 'native', 2)} {over}"
    elif verdict == "unstable":
        text = _unstable_text(record)
    elif verdict == "no-baseline":
        text = "no-baseline: " + _first_clause(record.get("reason") or "no saved baseline for this test here")
    else:
        text = f"{verdict}: {_first_clause(record.get('reason') or '')}".rstrip(": ")
    instructions = _instructions_text(record)
    if instructions:
        text += f"; {instructions}"
    return shorten(text)


def _blamed_on_host(record: Record) -> bool:
    return bool(record.get("blamed_on_host")) or str(record.get("reason") or "").startswith("host slow")


def _unstable_text(record: Record) -> str:
    reason = str(record.get("reason") or "")
    slowdown = record.get("host_slowdown")
    # The slowdown alone does not say that the host was blamed (it is reported for every
    # measured record); older reports have no ``blamed_on_host``, only the guard's wording.
    if _blamed_on_host(record) and isinstance(slowdown, (int, float)):
        ratio = _interval_text(record.get("ratio_to_baseline"), "baseline")
        return (f"unstable: host ran {slowdown:.2f}x slower than in the baseline around the test, "
                f"enough to explain {ratio}; re-run on a quiet machine")
    sd, sessions = record.get("between_session_sd"), record.get("baseline_sessions")
    if isinstance(sd, (int, float)):
        return (f"unstable: baseline sessions vary by {sd:.1%} (SD over {sessions}), too noisy to prove "
                "a change at this tolerance: steady the benchmark or raise the tolerance")
    return "unstable: " + _first_clause(reason)


def _against_text(record: Record) -> str | None:
    against = record.get("against")
    if not isinstance(against, Mapping):
        return None
    rev = str(against.get("rev") or "REV")[:10]
    interval = _interval_text(against, rev)
    if interval is None:
        return None
    pairs = against.get("pairs")
    count = len(pairs) if isinstance(pairs, (list, tuple)) else pairs
    return interval + _p_text(against.get("p_value")) + (f", {count} pairs" if count else "")


def _instructions_text(record: Record) -> str | None:
    counted = record.get("instructions")
    if not isinstance(counted, Mapping) or not isinstance(counted.get("ratio_to_baseline"), (int, float)):
        return None
    text = f"instructions {counted['ratio_to_baseline'] - 1:+.1%}"
    attribution = record.get("attribution")
    return text + (f" (attribution: {attribution})" if attribution else "")


def _first_clause(reason: str) -> str:
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    return first.split("; ")[0]


# -- the summary's parts --------------------------------------------------------------------

def verdict_counts(records: Iterable[Record]) -> dict[str, int]:
    """How many records have each status, in :data:`STATUS_ORDER`."""
    counts = Counter(status(r) for r in records)
    ordered = {name: counts.pop(name) for name in STATUS_ORDER if name in counts}
    ordered.update(sorted(counts.items()))
    return ordered


def failures(records: Iterable[Record]) -> list[Record]:
    """Records that fail their test item: a failing verdict or a broken test body."""
    return [r for r in records if is_failure(r)]


@dataclasses.dataclass(frozen=True)
class Environment:
    """One environment as the summary shows it."""

    name: str
    fingerprint_id: str | None
    description: str              # fingerprint.summary(): kind, CPU, kernel, Python
    engine: str | None            # "Docker Engine 26.1.5, overlay2" or "QEMU tcg"
    mounts: dict[str, str]        # mount name -> filesystem as seen inside
    startup_s: float | None
    problem: str | None           # unavailable, or its baseline unreadable


def environments(report: Mapping[str, Any]) -> list[Environment]:
    """The session's environments with what each really is, from the records' fingerprints."""
    # Imported here: the fingerprint package's collectors cost ~0.1 s to import, and
    # one_line_reason (the terminal's) needs none of it.
    from pytest_hostperf.fingerprint import summary as fingerprint_summary

    records = report.get("results", [])
    known = report.get("environments") or {}
    order = [e for e in (report.get("settings") or {}).get("envs", []) if e in known]
    out = []
    for name in order + sorted(set(known) - set(order)):
        env = known[name]
        mine = [r for r in records if r.get("env") == name]
        fingerprint: Mapping[str, Any] = next((r["fingerprint"] for r in mine if r.get("fingerprint")), {})
        mounts: dict[str, str] = {}
        for r in mine:
            for info in (r.get("mount_info") or {}).values():
                if r.get("mount") and isinstance(info, Mapping) and info.get("fstype"):
                    mounts[str(r["mount"])] = _filesystem(info)
        problems = [text.splitlines()[0] for text in (env.get("error"), env.get("baseline_error")) if text]
        out.append(Environment(name, env.get("fingerprint_id"), fingerprint_summary(fingerprint) if fingerprint else "",
                               _engine(fingerprint), mounts, env.get("startup_s"), "; ".join(problems) or None))
    return out


def _filesystem(info: Mapping[str, Any]) -> str:
    """``local disk (ext4)``: the classification names the type; a bare type where it does not."""
    kind = str(info.get("kind") or "")
    return kind if str(info["fstype"]) in kind else f"{info['fstype']} ({kind})" if kind else str(info["fstype"])


def _engine(fingerprint: Mapping[str, Any]) -> str | None:
    outside = fingerprint.get("outside") or {}
    engine = outside.get("engine")
    if isinstance(engine, Mapping) and engine.get("kind"):
        parts = [f"{engine['kind']} {engine.get('version') or ''}".strip()]
        parts += [str(engine[k]) for k in ("storage_driver",) if engine.get(k)]
        parts += ["rootless"] if engine.get("rootless") else []
        return ", ".join(parts)
    accelerator = outside.get("accelerator")
    if not accelerator:
        return None
    fallback = f" ({str(outside['fallback_reason']).split(':')[0]} failed)" if outside.get("fallback_reason") else ""
    return f"QEMU {outside.get('qemu') or ''} {accelerator}{fallback}".replace("  ", " ")


def not_covered(report: Mapping[str, Any], other_fingerprints: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """What the gate did not judge, one line each, grouped so a new machine reads as one line.

    ``other_fingerprints`` maps an environment to the fingerprint ids that do have a
    baseline file (from the baselines directory): it tells "this machine differs" apart
    from "this test was never saved".
    """
    lines = []
    for env in environments(report):
        if env.problem:
            lines.append(shorten(f"{env.name}: {env.problem}"))
    records = report.get("results", [])
    for env_name in dict.fromkeys(str(r.get("env")) for r in records):
        missing = [r for r in records if r.get("env") == env_name and status(r) == "no-baseline"]
        if missing:
            lines.append(_no_baseline_line(env_name, missing, report, (other_fingerprints or {}).get(env_name, ())))
    skipped = Counter(_first_clause(str(r.get("reason") or "")) for r in records if status(r) == "skipped")
    lines += [shorten(f"{count} skipped: {why}") for why, count in skipped.items()]
    lines += _unstable_lines(records)
    return lines


def _unstable_lines(records: Sequence[Record]) -> list[str]:
    """One line per test whose noisy targets the gate could not judge, one per host-blamed item."""
    lines: list[str] = []
    noisy: dict[str, list[Record]] = {}
    targets: dict[str, list[str]] = {}
    for r in records:
        targets.setdefault(str(r.get("test")), []).append(str(r.get("target")))
        if status(r) != "unstable":
            continue
        if isinstance(r.get("between_session_sd"), (int, float)) and not _blamed_on_host(r):
            noisy.setdefault(str(r.get("test")), []).append(r)
        else:
            lines.append(shorten(f"{r.get('item') or r.get('test')}: {one_line_reason(r)}"))
    for test, group in noisy.items():
        spreads = sorted(float(r["between_session_sd"]) for r in group)
        spread = f"{spreads[0]:.0%}" if len(spreads) == 1 else f"{spreads[0]:.0%}-{spreads[-1]:.0%}"
        lines.append(shorten(f"{test} [{_which(targets[test], [str(r.get('target')) for r in group])}]: "
                             f"unstable, baseline sessions vary by {spread}; too noisy to gate"))
    return lines


def _which(every: Sequence[str], some: Sequence[str]) -> str:
    """``native, docker``, or ``all 8 targets``, or ``all but native``: the shortest that is exact."""
    if len(some) == len(every) and len(every) > 2:
        return f"all {len(every)} targets"
    rest = [t for t in every if t not in some]
    if len(some) > 2 and len(rest) <= 2:
        return f"all but {', '.join(rest)}"
    return ", ".join(some)


def _no_baseline_line(env: str, missing: Sequence[Record], report: Mapping[str, Any],
                      others: Sequence[str]) -> str:
    fingerprint = next((str(r["fingerprint_id"]) for r in missing if r.get("fingerprint_id")), "?")
    with_file = [r for r in missing if r.get("baseline")]
    where = (report.get("settings") or {}).get("baselines") or "the baselines directory"
    if with_file:
        why = f"the baseline {fingerprint} has no saved session for them"
    elif others:
        why = (f"no baseline for this machine's fingerprint {fingerprint} in {where} "
               f"(saved for {', '.join(sorted(others)[:3])}: another machine)")
    else:
        why = f"no baseline for fingerprint {fingerprint} in {where}"
    return shorten(f"{env}: {len(missing)} item(s) not gated, {why}; save with --hostperf-save")
