"""The report summary's pure parts: one-line reasons, counts, environments, what was not gated."""

from __future__ import annotations

import pytest
from report_records import record, report

from pytest_hostperf.report.summary import (
    MAX_REASON,
    environments,
    failures,
    not_covered,
    one_line_reason,
    ratio_interval,
    shorten,
    verdict_counts,
)

LONG_UNSTABLE = ("baseline sessions vary by 20.6% (SD of log medians over 5); at 99.92% confidence only slowdowns "
                 "beyond ~110% could be proven, so a 5% tolerance is not enforceable: no practical tolerance works "
                 "at this noise: steady the benchmark; the host's reference workload was steadier (10.3%), so the "
                 "benchmark itself varies between sessions (warm-up, caches, allocation, I/O)")


def test_regression_reads_ratio_interval_p_and_the_records_tolerance() -> None:
    line = one_line_reason(record(verdict="regression", p_value=7.6e-05, tolerance=0.15,
                                  ratio_to_baseline={"ratio": 6.994, "ci_low": 1.967, "ci_high": 24.868}))
    assert line == "regression: 6.994x baseline [1.967, 24.868], p=7.6e-05, tolerance 15%"


def test_overhead_names_the_budget_when_the_record_has_it() -> None:
    over = record(target="docker", verdict="overhead", ratio_to_native={"ratio": 2.31, "ci_low": 2.1, "ci_high": 2.55})
    assert one_line_reason(over) == "overhead: 2.31x native [2.10, 2.55] over its budget"
    assert one_line_reason({**over, "max_overhead": 1.5}) == "overhead: 2.31x native [2.10, 2.55] over the 1.50x budget"


def test_unstable_says_how_noisy_the_baseline_is_in_one_line() -> None:
    line = one_line_reason(record(verdict="unstable", reason=LONG_UNSTABLE, between_session_sd=0.206))
    assert line.startswith("unstable: baseline sessions vary by 20.6% (SD over 5), too noisy")
    assert len(line) <= MAX_REASON and "\n" not in line


def test_unstable_blamed_on_the_host_says_so() -> None:
    line = one_line_reason(record(verdict="unstable", host_slowdown=1.32, reason="host slow: the reference ...",
                                  ratio_to_baseline={"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3}))
    assert line.startswith("unstable: host ran 1.32x slower than in the baseline around the test")
    assert "1.200x baseline [1.100, 1.300]" in line


def test_inconclusive_and_no_baseline_and_broken_bodies() -> None:
    assert one_line_reason(record(verdict="inconclusive", baseline_sessions=2)).startswith(
        "inconclusive: 1.010x baseline [0.970, 1.050], not proven (2 baseline sessions")
    assert one_line_reason(record(verdict="no-baseline", reason="no saved baseline for this test here "
                                  "(save one with --hostperf-save)")) == (
        "no-baseline: no saved baseline for this test here (save one with --hostperf-save)")
    failed = record(verdict=None, outcome="failed", reason="AssertionError: assert 3 == 4\n  traceback ...")
    assert one_line_reason(failed) == "failed: AssertionError: assert 3 == 4"


def test_against_decides_the_line_when_present_and_instructions_are_appended() -> None:
    ab = record(verdict="regression", against={"rev": "0123456789abcdef", "ratio": 1.1, "ci": [1.08, 1.12],
                                               "p_value": 1e-6, "pairs": 120},
                instructions={"per_call": 2.5e8, "ratio_to_baseline": 1.031, "noise": 0.0004}, attribution="code")
    assert one_line_reason(ab) == ("regression: 1.100x 0123456789 [1.080, 1.120], p=1e-06, 120 pairs; "
                                   "instructions +3.1% (attribution: code)")
    assert "pairs" not in one_line_reason(record(verdict="regression"))   # absent: skipped silently


@pytest.mark.parametrize("verdict", ["regression", "overhead", "unstable", "inconclusive", "no-baseline", None])
def test_every_line_fits_whatever_the_input(verdict: str | None) -> None:
    huge = record(test="t::" + "x" * 400, verdict=verdict, outcome="error", reason="y" * 1000,
                  ratio_to_baseline={"ratio": 1e300, "ci_low": 1e-300, "ci_high": 1e301})
    line = one_line_reason(huge)
    assert 0 < len(line) <= MAX_REASON and "\n" not in line


def test_shorten_marks_a_cut() -> None:
    assert shorten("a  b\nc") == "a b c"
    cut = shorten("word " * 100, 20)
    assert len(cut) == 20 and cut.endswith("…")


def test_ratio_interval_reads_both_shapes() -> None:
    assert ratio_interval({"ratio": 1.1, "ci_low": 1.0, "ci_high": 1.2}) == (1.1, 1.0, 1.2)
    assert ratio_interval({"ratio": 1.1, "ci": [1.0, 1.2]}) == (1.1, 1.0, 1.2)
    assert ratio_interval({"ratio": None}) is None and ratio_interval(None) is None


def test_counts_in_severity_order_and_failures() -> None:
    records = [record(verdict="pass"), record(verdict="regression"), record(verdict="pass"),
               record(verdict=None, outcome="skipped"), record(verdict="unstable"), record(verdict="overhead"),
               record(verdict=None, outcome="error")]
    assert list(verdict_counts(records).items()) == [("regression", 1), ("overhead", 1), ("error", 1),
                                                     ("unstable", 1), ("skipped", 1), ("pass", 2)]
    assert [r["verdict"] or r["outcome"] for r in failures(records)] == ["regression", "overhead", "error"]


def test_environments_in_session_order_with_engine_accelerator_and_filesystems() -> None:
    docker_print = {"env_kind": "container", "outside": {"engine": {"kind": "Docker Engine", "version": "26.1",
                                                                    "storage_driver": "overlay2", "rootless": True}}}
    qemu_print = {"env_kind": "vm", "outside": {"accelerator": "tcg", "qemu": "7.2.22",
                                                "fallback_reason": "kvm: qemu exited with status -6"}}
    records = [record(target="qemu-share", fingerprint=qemu_print,
                      mount_info={"share": {"fstype": "virtiofs", "kind": "virtiofs host share"}}),
               record(target="docker-bind", fingerprint=docker_print),
               record(target="docker-volume", fingerprint=docker_print,
                      mount_info={"volume": {"fstype": "xfs", "kind": None}}),
               record(target="native")]
    data = report(records, envs=("native", "docker", "qemu"), qemu={"baseline_error": "baseline file q.json: broken"})
    envs = {e.name: e for e in environments(data)}
    assert list(envs) == ["native", "docker", "qemu"]
    assert envs["docker"].engine == "Docker Engine 26.1, overlay2, rootless"
    assert envs["docker"].mounts == {"bind": "local disk (ext4)", "volume": "xfs"}
    assert envs["qemu"].engine == "QEMU 7.2.22 tcg (kvm failed)"
    assert envs["qemu"].mounts == {"share": "virtiofs host share"}
    assert envs["qemu"].problem == "baseline file q.json: broken"
    assert envs["native"].engine is None and envs["native"].problem is None


def test_not_covered_explains_a_new_machine_in_one_line_per_environment() -> None:
    missing = [record(test=f"t::test_{i}", target=t, verdict="no-baseline", baseline=None)
               for i in range(5) for t in ("native", "docker")]
    lines = not_covered(report(missing), other_fingerprints={"native": ["0123456789ab"]})
    assert lines == [
        "native: 5 item(s) not gated, no baseline for this machine's fingerprint nnnnnnnnnnnn in "
        "/nonexistent/baselines (saved for 0123456789ab: another machine); save with --hostperf-save",
        "docker: 5 item(s) not gated, no baseline for fingerprint dddddddddddd in /nonexistent/baselines; "
        "save with --hostperf-save"]
    never_saved = not_covered(report([record(verdict="no-baseline")]))
    assert never_saved == ["native: 1 item(s) not gated, the baseline nnnnnnnnnnnn has no saved session for them; "
                           "save with --hostperf-save"]


def test_not_covered_lists_unavailable_environments_skips_and_groups_noise_by_test() -> None:
    records = [record(target="docker", verdict=None, outcome="skipped", reason="docker unavailable: no engine; x"),
               record(target="native", verdict="unstable", between_session_sd=0.09),
               record(target="native", test="t::test_b", verdict="unstable", between_session_sd=0.21),
               record(target="docker-bind", test="t::test_b", verdict="unstable", between_session_sd=0.13),
               record(target="docker-volume", test="t::test_b", verdict="unstable", host_slowdown=1.4,
                      reason="host slow: ...")]
    lines = not_covered(report(records, docker={"error": "cannot reach the engine\nlong traceback"}))
    assert lines[0] == "docker: cannot reach the engine"
    assert "1 skipped: docker unavailable: no engine" in lines
    assert "tests/test_a.py::test_x [native]: unstable, baseline sessions vary by 9%; too noisy to gate" in lines
    assert "t::test_b [native, docker-bind]: unstable, baseline sessions vary by 13%-21%; too noisy to gate" in lines
    eight = [record(target=t, verdict="unstable", between_session_sd=0.1) for t in "abcdefgh"]
    assert not_covered(report(eight))[-1].startswith("tests/test_a.py::test_x [all 8 targets]: unstable")
    eight[0]["verdict"] = "pass"
    assert not_covered(report(eight))[-1].startswith("tests/test_a.py::test_x [all but a]: unstable")
    assert any(line.startswith("t::test_b[docker-volume]: unstable: host ran 1.40x slower") for line in lines)
    assert all(len(line) <= MAX_REASON for line in lines)
