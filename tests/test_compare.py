"""pytest_hostperf.compare and the ``hostperf compare`` command, on files built here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_hostperf.baselines import BaselineStore
from pytest_hostperf.compare import CompareError, compare_against, compare_files, render
from pytest_hostperf.model import Record, Verdict
from pytest_hostperf.stats import summarize

FID = "0123456789ab"
TEST_A = "tests/test_perf.py::test_a"
TEST_B = "tests/test_perf.py::test_b"
REPO = Path(__file__).resolve().parents[1]


def samples(rng: np.random.Generator, scale: float = 1.0, n: int = 60, shift: float = 0.0) -> list[float]:
    """Rounds around 1 ms with ~1% noise."""
    return [float(x) for x in 1e-3 * scale * np.exp(shift + rng.normal(0.0, 0.01, n))]


def make_baseline(directory: Path, env: str = "native", tests=(TEST_A,), mount: str = "-",
                  shifts=(0.0, 0.004, -0.004)) -> Path:
    """One session per shift (session-level offset of the log median)."""
    rng = np.random.default_rng(42)
    store = BaselineStore(directory)
    path = None
    for i, shift in enumerate(shifts):
        ms = []
        for test in tests:
            s = samples(rng, shift=shift)
            ms.append(Record(test, env, None if mount == "-" else mount, samples=tuple(s), iterations=100,
                             summary=summarize(s)))
        path = store.save(env, FID, {"cpu": "x"}, {"cpu": "x"}, ms, f"session-{i}")
    return path


def make_report(path: Path, results: list[dict]) -> Path:
    path.write_text(json.dumps({"tool": "pytest-hostperf", "results": results}), encoding="utf-8")
    return path


def record(test: str, data: list[float], env: str = "native", mount=None, fid: str = FID) -> dict:
    return {"test": test, "env": env, "mount": mount, "samples": data, "fingerprint_id": fid}


@pytest.fixture
def baseline(tmp_path) -> Path:
    return make_baseline(tmp_path / "baselines")


def test_regression_row(tmp_path, baseline):
    report = make_report(tmp_path / "report.json", [record(TEST_A, samples(np.random.default_rng(1), 1.3))])
    (row,) = compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    assert row.test == TEST_A and row.env == "native" and row.mount == "-"
    assert row.verdict is Verdict.REGRESSION
    assert row.judgement.to_baseline.ratio == pytest.approx(1.3, rel=0.02)
    assert row.judgement.to_baseline.ci_low > 1.05
    assert row.judgement.baseline_sessions == 3
    assert baseline.name in row.judgement.reason
    lines = render([row])
    assert lines[0].startswith("regression") and TEST_A in lines[0] and "[native]" in lines[0]
    assert lines[1].strip().startswith("regression:")
    assert lines[-1] == "1 regression"


def test_unchanged_passes(tmp_path, baseline):
    report = make_report(tmp_path / "report.json", [record(TEST_A, samples(np.random.default_rng(2)))])
    (row,) = compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    assert row.verdict is Verdict.PASS
    assert row.judgement.to_baseline.ratio == pytest.approx(1.0, abs=0.02)
    assert row.median_s == pytest.approx(1e-3, rel=0.02)
    assert render([row])[-1] == "1 pass"


def test_improvement_and_unknown_test(tmp_path, baseline):
    rng = np.random.default_rng(3)
    report = make_report(tmp_path / "report.json", [
        record(TEST_A, samples(rng, 0.7)),
        record("tests/test_perf.py::test_new", samples(rng)),
        record("tests/test_perf.py::test_skipped", []),          # no samples: ignored
    ])
    rows = compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    assert [(r.test, r.verdict) for r in rows] == [
        (TEST_A, Verdict.IMPROVEMENT), ("tests/test_perf.py::test_new", Verdict.NO_BASELINE)]
    assert sorted(render(rows)[-1].split(", ")) == ["1 improvement", "1 no-baseline"]


def test_bonferroni_counts_comparable_tests(tmp_path):
    baseline = make_baseline(tmp_path / "b", tests=(TEST_A, TEST_B))
    rng = np.random.default_rng(4)
    report = make_report(tmp_path / "report.json", [
        record(TEST_A, samples(rng)), record(TEST_B, samples(rng)), record("t::new", samples(rng))])
    rows = compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    for row in rows[:2]:
        assert row.judgement.to_baseline.confidence == pytest.approx(1 - 2 * 0.01 / 2)


def test_mounts_are_matched(tmp_path):
    baseline = make_baseline(tmp_path / "b", env="docker", mount="bind")
    rng = np.random.default_rng(5)
    report = make_report(tmp_path / "report.json", [
        record(TEST_A, samples(rng, 1.3), env="docker", mount="bind"),
        record(TEST_A, samples(rng), env="docker", mount="volume"),
    ])
    rows = compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    assert [(r.mount, r.verdict) for r in rows] == [("bind", Verdict.REGRESSION), ("volume", Verdict.NO_BASELINE)]
    assert "(bind)" in render(rows)[0]


def test_wrong_environment_names_both(tmp_path, baseline):
    report = make_report(tmp_path / "report.json", [record(TEST_A, samples(np.random.default_rng(6)), env="docker")])
    with pytest.raises(CompareError) as info:
        compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    message = str(info.value)
    assert str(report) in message and str(baseline) in message
    assert "docker" in message and "'native'" in message
    assert "same environment" in message


def test_baseline_compared_with_itself_uses_last_session_vs_rest(tmp_path):
    baseline = make_baseline(tmp_path / "b", shifts=(0.0, 0.004, -0.004, 0.002, 0.03))
    (row,) = compare_files(baseline, baseline, tolerance=0.05, alpha=0.01)
    assert row.judgement.baseline_sessions == 4
    assert row.verdict is Verdict.PASS
    # the last session (shifted by +3%) against the first four, not against its own copy
    assert row.judgement.to_baseline.ratio == pytest.approx(np.exp(0.03 - 0.0005), abs=0.01)
    assert row.judgement.to_baseline.ratio > 1.01


def test_last_session_of_a_baseline_against_another(tmp_path):
    baseline = make_baseline(tmp_path / "b")
    slower = make_baseline(tmp_path / "c", shifts=(0.0, 0.0, 0.3))   # last session 35% slower
    (row,) = compare_files(slower, baseline, tolerance=0.05, alpha=0.01)
    assert row.judgement.baseline_sessions == 3
    assert row.verdict is Verdict.REGRESSION


def test_corrupt_inputs(tmp_path, baseline):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(CompareError) as info:
        compare_files(bad, baseline, tolerance=0.05, alpha=0.01)
    assert str(bad) in str(info.value)
    with pytest.raises(CompareError) as info:
        compare_files(baseline, bad, tolerance=0.05, alpha=0.01)
    assert str(bad) in str(info.value) and "not valid JSON" in str(info.value)


# -- the real command ------------------------------------------------------------------------

def start_cli(*args: Path | str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest_hostperf.cli", "compare", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_cli_exit_codes(tmp_path, baseline):
    rng = np.random.default_rng(7)
    slow = make_report(tmp_path / "slow.json", [record(TEST_A, samples(rng, 1.3))])
    same = make_report(tmp_path / "same.json", [record(TEST_A, samples(rng))])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"tool": "pytest-hostperf", "schema_version": 1, ', encoding="utf-8")
    # the three commands run in parallel: each pays the scipy import
    procs = [start_cli(slow, baseline), start_cli(same, baseline), start_cli(same, corrupt)]

    code, out, err = finish(procs[0])
    assert code == 1, err
    assert out.startswith("regression") and "1 regression" in out

    code, out, err = finish(procs[1])
    assert code == 0, err
    assert out.startswith("pass") and "1 pass" in out

    code, out, err = finish(procs[2])
    assert code == 2
    assert str(corrupt) in err and err.startswith("hostperf compare: ")
    assert "not valid JSON" in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("bad_record", [
    {"test": TEST_A, "samples": [1e-3, 1.1e-3]},                     # no "env"
    {"test": TEST_A, "env": "native", "samples": [1e-3, -1.0]},      # negative timing
])
def test_malformed_report_is_a_compare_error(tmp_path, baseline, bad_record):
    report = make_report(tmp_path / "report.json", [bad_record])
    with pytest.raises(CompareError) as info:
        compare_files(report, baseline, tolerance=0.05, alpha=0.01)
    assert str(report) in str(info.value)


@pytest.mark.parametrize("text", [
    '{"tool": "pytest-hostperf", "results": [1]}',
    '{"tool": "pytest-hostperf", "results": [{"test": "t", "env": "native", "samples": "fast"}]}',
    '{"tool": "pytest-hostperf", "results": [{"test": "t", "env": "native", "samples": [1e-3], "verdict": "meh"}]}',
])
def test_cli_malformed_report_is_a_clear_error_not_a_traceback(tmp_path, baseline, text):
    report = tmp_path / "report.json"
    report.write_text(text, encoding="utf-8")
    code, out, err = finish(start_cli(report, baseline))
    assert code == 2 and out == ""
    assert err.startswith(f"hostperf compare: {report}: result #0 is malformed") and "Traceback" not in err


def paired(ratio: float, ci: tuple[float, float], **extra) -> dict:
    """A record of a --hostperf-against session: its comparison with REV, from pairs."""
    against = {"rev": "ab" * 20, "ratio": ratio, "ci": list(ci), "p_value": 0.001, "pairs": 180,
               "verdict": "pass", "reason": "", "confidence": 0.99, "spread": 0.03, **extra}
    return {**record(TEST_A, [1e-3, 1.01e-3]), "against": against, "tolerance": 0.05}


def test_a_reports_pairs_are_judged_again_at_another_tolerance(tmp_path):
    report = make_report(tmp_path / "r.json", [paired(1.04, (1.03, 1.05))])
    [row] = compare_against(report)                      # the item's own 5%: not beyond it
    assert row.judgement is not None and row.judgement.verdict == "pass" and not row.fails
    [row] = compare_against(report, tolerance=0.02)      # the whole interval is beyond 2%
    assert row.judgement is not None and row.judgement.verdict == "regression" and row.fails
    assert "tolerance 2%" in row.judgement.reason and "abababababab" in row.judgement.reason


def test_a_report_without_pairs_says_how_to_make_one(tmp_path):
    plain = make_report(tmp_path / "plain.json", [record(TEST_A, [1e-3, 1.1e-3])])
    with pytest.raises(CompareError, match="--hostperf-against=REV"):
        compare_against(plain)
    none = {"rev": "cd" * 20, "verdict": "no-baseline", "reason": "not at REV cdcdcdcdcdcd: added since",
            "error": "absent"}
    absent = make_report(tmp_path / "absent.json", [{**record(TEST_A, [1e-3]), "against": none}])
    [row] = compare_against(absent)
    assert row.judgement is None and "added since" in row.reason and not row.fails


def test_cli_judges_a_reports_pairs_without_a_baseline(tmp_path):
    report = make_report(tmp_path / "r.json", [paired(1.04, (1.03, 1.05))])
    code, out, _ = finish(start_cli(report))
    assert code == 0 and out.startswith("pass") and "1.040x REV abababababab" in out
    code, out, _ = finish(start_cli(report, "--tolerance=2%"))
    assert code == 1 and out.startswith("regression") and "tolerance 2%" in out
