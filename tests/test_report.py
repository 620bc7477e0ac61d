"""report.json / report.terminal / report.markdown from records, and the controller's translations."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from fake_env import samples, settings

from pytest_hostperf import controller
from pytest_hostperf.model import EnvironmentReport, Outcome, RatioEstimate, Record, SessionSummary, Verdict
from pytest_hostperf.report.json import ReportError, build_json, read_records, write_json
from pytest_hostperf.report.markdown import render_markdown
from pytest_hostperf.report.terminal import coverage_line, format_seconds, render_terminal

RATIO = RatioEstimate(1.2, 1.1, 1.3, 0.99, 1e-5, 1.0, "prediction t-test over 5 baseline sessions")


def record(env: str = "native", verdict: Verdict | None = Verdict.PASS, **changes: object) -> Record:
    data = tuple(samples(2e-3))
    base = dict(test="t.py::test_a", env=env, item=f"t.py::test_a[{env}]", target=env, verdict=verdict,
                reason="why", samples=data, summary=SessionSummary(2e-3, 0.01, len(data)))
    base.update(changes)
    return Record(**base)  # type: ignore[arg-type]


def report(tmp_path: Path, records: list[Record], strict: bool = False) -> dict:
    envs = [EnvironmentReport("native", "0123456789ab", 0.5, 1.2, uncovered="fingerprint 0123456789ab differs "
                              "from baselines/native-ba9876543210.json in: cpu_model, kernel"),
            EnvironmentReport("docker", None, error="environment 'docker': no engine\n  hint: start it")]
    return build_json(records, settings(tmp_path, strict=strict), envs, session_id="abc", comparisons=len(records))


def test_json_report_round_trips_through_a_file(tmp_path: Path) -> None:
    records = [record(ratio_to_baseline=RATIO, verdict=Verdict.REGRESSION),
               record("docker", None, outcome=Outcome.SKIPPED, samples=(), summary=None)]
    data = report(tmp_path, records)
    assert data["schema_version"] == 1 and data["settings"]["comparisons"] == 2
    first = data["results"][0]
    for key in ("test", "env", "mount", "verdict", "median_s", "samples", "ratio_to_baseline", "ratio_to_native",
                "p_value", "fingerprint", "against", "instructions", "attribution"):
        assert key in first
    assert first["p_value"] == 1e-5 and first["against"] is None and first["attribution"] is None
    path = tmp_path / "out" / "r.json"
    write_json(path, data)
    again = read_records(path)
    assert [r.to_json() for r in again] == data["results"]
    assert again[1].outcome is Outcome.SKIPPED and again[1].verdict is None


@pytest.mark.parametrize("text, message", [
    ("{", "is not valid JSON"),
    ('{"tool": "other", "results": []}', "is not a pytest-hostperf JSON report"),
    ('{"tool": "pytest-hostperf", "schema_version": 7, "results": []}', "schema_version 7"),
    ('{"tool": "pytest-hostperf", "results": [1]}', "result #0 is malformed"),
    ('{"tool": "pytest-hostperf", "results": [{"test": "t", "env": "native", "samples": [0.1, "x"]}]}',
     "samples[] is 'x'"),
])
def test_a_bad_report_is_a_report_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ReportError) as info:
        read_records(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_terminal_table_footer_and_the_coverage_line(tmp_path: Path) -> None:
    records = [record(ratio_to_baseline=RATIO, verdict=Verdict.REGRESSION, reason="regression: 1.200x"),
               record(verdict=Verdict.NO_BASELINE, item="t.py::test_b[native]", test="t.py::test_b"),
               record(verdict=Verdict.REGRESSION, accepted="new parser", item="t.py::test_c[native]")]
    lines = render_terminal(report(tmp_path, records))
    assert lines[0].split() == ["test", "env", "median", "vs", "baseline", "[CI]", "vs", "native", "[CI]", "verdict"]
    assert "1.20x [1.10, 1.30]" in lines[2] and lines[2].endswith("regression")
    assert lines[4].endswith("regression (accepted)")
    assert any(line.startswith("docker: unavailable: environment 'docker': no engine") for line in lines)
    coverage = [line for line in lines if line.startswith("NOT GATED")]
    assert coverage == ["NOT GATED: 1 of 3 items have no baseline: native: fingerprint 0123456789ab differs from "
                        "baselines/native-ba9876543210.json in: cpu_model, kernel"]
    assert "REGRESSION t.py::test_a[native]: regression: 1.200x baseline [1.100, 1.300], p=1e-05" in lines
    assert "(--hostperf-strict: these fail)" in coverage_line(report(tmp_path, records, strict=True))
    assert coverage_line(report(tmp_path, records[:1])) == ""


def test_an_item_gets_one_short_line_and_verbose_gets_the_whole_reason(tmp_path: Path) -> None:
    long_reason = "unstable: " + "baseline sessions vary a great deal; " * 30
    records = [record(verdict=Verdict.UNSTABLE, reason=long_reason, between_session_sd=0.2, baseline_sessions=4,
                      item="t.py::test_" + "very_long_name_" * 8 + "[native]"),
               record(verdict=None, outcome=Outcome.FAILED, reason="AssertionError\nin the body")]
    data = report(tmp_path, records)
    short = [line for line in render_terminal(data) if line.startswith(("UNSTABLE", "FAILED"))]
    assert len(short) == 2
    assert all(len(line) <= 200 + len("UNSTABLE ") + len(records[0].item) + 2 for line in short)
    assert "vary by 20.0% (SD over 4)" in short[0]
    assert short[1] == "FAILED t.py::test_a[native]: failed: AssertionError"
    verbose = [line for line in render_terminal(data, verbose=True) if line.startswith("UNSTABLE")]
    assert verbose == [f"UNSTABLE {records[0].item}: {' '.join(long_reason.split())}"]
    # long test ids keep the table's columns aligned
    table = render_terminal(data)[:4]
    assert len({line.index("native") for line in (table[2], table[3])}) == 1


def test_markdown_lists_what_needs_a_look_and_folds_the_whole_reasons(tmp_path: Path) -> None:
    text = render_markdown(report(tmp_path, [record(ratio_to_baseline=RATIO, verdict=Verdict.REGRESSION,
                                                    reason="regression: the long story"), record()]))
    head, _, details = text.partition("<details>")
    assert "### Needs a look" in head and "- **regression** `t.py::test_a[native]`: regression: 1.200x" in head
    assert "the long story" not in head and "the long story" in details


def test_markdown_escapes_pipes_and_marks_failures(tmp_path: Path) -> None:
    text = render_markdown(report(tmp_path, [record(test="t.py::test_a[x|y]", verdict=Verdict.OVERHEAD)]))
    assert "| `t.py::test_a[x\\|y]` | native |" in text and "**overhead**" in text
    assert text.startswith("## pytest-hostperf\n")


def test_format_seconds() -> None:
    assert [format_seconds(x) for x in (2.5, 2.41e-3, 7e-6, 3e-9)] == ["2.5 s", "2.41 ms", "7 us", "3 ns"]


def test_json_report_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, report(tmp_path, [record(host_slowdown=float("nan"))]))
    assert "NaN" not in path.read_text() and json.loads(path.read_text())["results"][0]["host_slowdown"] is None


# -- controller: how records become pytest reports ---------------------------------------------

def test_a_record_fails_its_item_for_a_verdict_the_gate_being_off_or_strict() -> None:
    assert controller._failure(record(verdict=Verdict.PASS), strict=True) == ""
    assert controller._failure(record(verdict=Verdict.REGRESSION), strict=False).startswith(
        "hostperf regression [native]: why")
    assert controller._failure(record(verdict=Verdict.REGRESSION, accepted="known"), strict=False) == ""
    assert controller._failure(record(verdict=Verdict.NO_BASELINE), strict=False) == ""
    assert "(--hostperf-strict)" in controller._failure(record(verdict=Verdict.NO_BASELINE), strict=True)
    gate_off = record(verdict=None, outcome=Outcome.ERROR, reason="baseline file x: not valid JSON")
    assert controller._failure(gate_off, strict=False) == "baseline file x: not valid JSON"


def test_sighup_and_sigterm_stop_the_session_like_ctrl_c() -> None:
    assert signal.SIGHUP in controller.STOP_SIGNALS and signal.SIGTERM in controller.STOP_SIGNALS
    with pytest.raises(KeyboardInterrupt, match="signal 1"):
        controller._interrupt(signal.SIGHUP, None)
