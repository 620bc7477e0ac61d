"""Reports: the JSON record set, Markdown for CI summaries, and the terminal table.

``build_json`` is the single source: the other two render what it produced, so every
output shows the same numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pytest_hostperf.baselines import dumps
from pytest_hostperf.sampling import thin
from pytest_hostperf.stats import RatioEstimate

if TYPE_CHECKING:
    from pytest_hostperf.session import HostperfSession

REPORT_SCHEMA_VERSION = 1
#: Raw samples kept per record: the report must stay readable by ``hostperf compare``.
REPORT_SAMPLES = 1000


def _ratio(estimate: RatioEstimate | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {"ratio": estimate.ratio, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
            "confidence": estimate.confidence, "method": estimate.method}


def build_json(session: "HostperfSession") -> dict[str, Any]:
    settings = session.settings
    records = []
    for result in session.results.values():
        request = result.request
        judgement = result.judgement
        to_baseline = judgement.to_baseline if judgement else None
        runtime = session.runtimes.get(request.target.env)
        records.append({
            "test": request.test,
            "item": request.item_id,
            "env": request.target.env,
            "target": request.target.id,
            "mount": request.target.mount,
            "outcome": result.outcome,
            "verdict": judgement.verdict.value if judgement else None,
            "reason": judgement.reason if judgement else result.message,
            "median_s": result.summary.median_s if result.summary else None,
            "rounds": result.summary.rounds if result.summary else 0,
            "iterations": result.iterations,
            "samples": thin(result.samples, REPORT_SAMPLES),
            "ratio_to_baseline": _ratio(to_baseline),
            "ratio_to_native": _ratio(judgement.to_native if judgement else None),
            "p_value": to_baseline.p_slower if to_baseline else None,
            "baseline_sessions": judgement.baseline_sessions if judgement else 0,
            "between_session_sd": judgement.session_sd if judgement else None,
            "host_slowdown": judgement.host_slowdown if judgement else None,
            "baseline": result.baseline_path,
            "fingerprint_id": result.fingerprint_id,
            "fingerprint": runtime.fingerprint if runtime else {},
            "mount_info": result.mount_info,
            "orchestration_ms": [round(v * 1000, 3) for v in result.orchestration_s],
            "attempt_medians_s": list(result.attempt_medians),
        })
    environments = {
        name: {"fingerprint_id": rt.fingerprint_id, "startup_s": rt.startup_s,
               "orchestration_ms_median": session.orchestration_median_ms(name),
               "error": str(rt.failure) if rt.failure else None,
               "baseline_error": str(rt.baseline_error) if rt.baseline_error else None}
        for name, rt in session.runtimes.items()
    }
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": "pytest-hostperf",
        "session_id": session.session_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"envs": list(settings.envs), "tolerance": settings.tolerance, "alpha": settings.alpha,
                     "comparisons": session.comparisons, "baselines": str(settings.baselines_dir),
                     "blocks": settings.blocks},
        "environments": environments,
        "results": records,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(data), encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("tool") != "pytest-hostperf" or "results" not in data:
        raise ValueError(f"{path} is not a pytest-hostperf JSON report (made with --hostperf-json)")
    return data


# -- rendering ------------------------------------------------------------------------------

def _time(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def format_seconds(seconds: float) -> str:
    """A duration in the largest unit below it, three significant digits: 2.41 ms."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio_text(ratio: Mapping[str, Any] | None) -> str:
    if not ratio:
        return "-"
    return f"{ratio['ratio']:.2f}x [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]"


_COLUMNS = ("test", "env", "median", "vs baseline [CI]", "vs native [CI]", "verdict")


def _rows(data: Mapping[str, Any]) -> Iterable[tuple[str, ...]]:
    for r in data["results"]:
        verdict = r["verdict"] or r["outcome"]
        yield (r["test"], r["target"], _time(r["median_s"]), _ratio_text(r["ratio_to_baseline"]),
               _ratio_text(r["ratio_to_native"]), verdict)


def render_terminal(data: Mapping[str, Any]) -> list[str]:
    rows = [_COLUMNS, *_rows(data)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.extend(_footer(data))
    return lines


def _footer(data: Mapping[str, Any]) -> list[str]:
    lines = []
    settings = data["settings"]
    lines.append(f"tolerance {settings['tolerance']:.0%}, alpha {settings['alpha']} over "
                 f"{settings['comparisons']} comparisons (Bonferroni); baselines in {settings['baselines']}")
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
        if env["baseline_error"]:
            parts.append(f"BASELINE ERROR: {env['baseline_error']}")
        lines.append(" ".join(parts))
    for r in data["results"]:
        if r["verdict"] in ("regression", "overhead", "unstable", "inconclusive"):
            lines.append(f"{r['verdict'].upper()} {r['item']}: {r['reason']}")
    return lines


def render_markdown(data: Mapping[str, Any]) -> str:
    out = ["## pytest-hostperf", "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in _rows(data):
        cells = [c.replace("|", "\\|") for c in row]
        cells[0] = f"`{cells[0]}`"
        if row[-1] in ("regression", "overhead"):
            cells[-1] = f"**{row[-1]}**"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.extend(f"- {line}" for line in _footer(data))
    return "\n".join(out) + "\n"
