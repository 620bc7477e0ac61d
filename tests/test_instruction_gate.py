"""The instruction-count gate's pure parts: option, count baselines, answers, verdict folding, reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pytest_hostperf.baselines import BaselineError
from pytest_hostperf.count_baselines import CountSave, CountStore
from pytest_hostperf.counting import judge_instructions
from pytest_hostperf.model import Attribution, Instructions, Outcome, RatioEstimate, Record, SessionSummary, Verdict
from pytest_hostperf.options import parse_measure
from pytest_hostperf.report.terminal import render_terminal
from pytest_hostperf.run.count import combine, parse_count_answer


def test_measure_lists_time_and_instructions_and_refuses_anything_else() -> None:
    assert parse_measure("time") == ("time",)
    assert parse_measure(" instructions , time ") == ("time", "instructions")
    with pytest.raises(argparse.ArgumentTypeError, match="time and instructions"):
        parse_measure("time,cycles")
    with pytest.raises(argparse.ArgumentTypeError, match="time is always measured"):
        parse_measure("instructions")


def test_count_files_keep_the_last_sessions_per_software_and_survive_a_round_trip(tmp_path: Path) -> None:
    store = CountStore(tmp_path)
    save = CountSave("native", "abc123", {"python": "3.11"}, [("t.py::test_a", "-", 1000.0, 0.001)])
    for session in range(7):
        store.save_all([save], f"s{session}")
    loaded = store.load("native", "abc123")
    assert loaded is not None and loaded.software == {"python": "3.11"}
    history = loaded.counts["t.py::test_a"]["-"]
    assert [c.session_id for c in history] == ["s2", "s3", "s4", "s5", "s6"]
    assert loaded.latest("t.py::test_a", "-") == history[-1] and history[-1].per_call == 1000.0
    assert loaded.latest("t.py::test_b", "-") is None
    assert store.load("native", "other") is None
    assert store.path_for("native", "abc123").parent.name == "instructions"


def test_an_unreadable_count_file_is_an_error_and_is_never_overwritten(tmp_path: Path) -> None:
    store = CountStore(tmp_path)
    path = store.path_for("docker", "abc")
    path.parent.mkdir(parents=True)
    path.write_text('{"tool": "pytest-hostperf", "kind": "instructions", "schema_version": 1, '
                    '"counts": {"t": {"-": [{"per_call": -5}]}}}')
    with pytest.raises(BaselineError, match="per_call"):
        store.load("docker", "abc")
    with pytest.raises(BaselineError):
        store.save_all([CountSave("docker", "abc", {}, [("t", "-", 10.0, 0.0)])], "s")
    assert '"per_call": -5' in path.read_text()


def test_a_count_answer_is_checked_like_any_agent_answer() -> None:
    good = {"outcome": "passed", "instructions": {"per_call": 1234.5, "noise": 0.0002},
            "software": {"id": "abc", "python": "3.11"}}
    count = parse_count_answer(good)
    assert (count.per_call, count.noise, count.software_id) == (1234.5, 0.0002, "abc")
    assert "did not reach" in parse_count_answer({"outcome": "passed", "instructions": None,
                                                  "instructions_reason": "the test did not reach benchmark(...)"}
                                                 ).reason
    assert "per_call" in parse_count_answer({**good, "instructions": {"per_call": float("nan")}}).reason
    assert "noise" in parse_count_answer({**good, "instructions": {"per_call": 5, "noise": -1}}).reason
    assert "fingerprint" in parse_count_answer({**good, "software": None}).reason
    assert "skipped" in parse_count_answer({"outcome": "skipped", "instructions": None,
                                            "instructions_reason": "valgrind missing"}).reason


def _timed(verdict: Verdict, ratio: float = 1.0, low: float = 0.97, high: float = 1.03) -> Record:
    return Record(test="t.py::test_x", env="native", item="t.py::test_x[native]", target="native",
                  outcome=Outcome.PASSED, verdict=verdict, reason="time reason", samples=(0.001,) * 5,
                  summary=SessionSummary(0.001, 0.01, 5), tolerance=0.05,
                  ratio_to_baseline=RatioEstimate(ratio, low, high, 0.99, 0.5, 0.5, "test"))


def _counted(per_call: float, saved: float) -> tuple[Instructions, object]:
    judgement = judge_instructions(per_call, saved, noise=0.0001, baseline_noise=0.0001, tolerance=0.01)
    return Instructions(per_call, judgement.ratio, judgement.noise, judgement.verdict, judgement.reason, "sw",
                        saved), judgement


def test_an_instruction_regression_fails_an_item_whose_time_passed_and_blames_the_code() -> None:
    instructions, judgement = _counted(1_030_000, 1_000_000)
    record = combine(_timed(Verdict.PASS), instructions, judgement, "")  # type: ignore[arg-type]
    assert record.verdict is Verdict.REGRESSION and record.fails
    assert record.attribution is Attribution.CODE
    assert record.reason.startswith("instructions +3.00% (1,030,000 per call vs 1,000,000 saved)")
    assert "time alone: pass: time reason" in record.reason
    assert record.to_json()["instructions"]["ratio_to_baseline"] == pytest.approx(1.03)


def test_time_changes_with_the_same_count_blame_the_platform_and_keep_the_time_verdict() -> None:
    instructions, judgement = _counted(1_000_100, 1_000_000)
    record = combine(_timed(Verdict.REGRESSION, 1.2, 1.15, 1.25), instructions, judgement, "")  # type: ignore[arg-type]
    assert record.verdict is Verdict.REGRESSION and record.attribution is Attribution.PLATFORM
    assert record.reason.startswith("time reason; instructions +0.01% (within 1%)")
    assert "CPU work only" in record.reason


def test_unchanged_code_passes_and_an_uncounted_item_says_why() -> None:
    instructions, judgement = _counted(1_000_000, 1_000_000)
    record = combine(_timed(Verdict.PASS), instructions, judgement, "")  # type: ignore[arg-type]
    assert record.verdict is Verdict.PASS and record.attribution is Attribution.NONE and not record.fails
    skipped = combine(_timed(Verdict.PASS), None, None, "qemu runs CPU work ~12x slower")
    assert skipped.verdict is Verdict.PASS and skipped.instructions is None and skipped.attribution is None
    assert skipped.reason.endswith("instructions not counted: qemu runs CPU work ~12x slower")


def test_the_terminal_table_gets_an_instructions_column_when_counting() -> None:
    instructions, judgement = _counted(1_030_000, 1_000_000)
    record = combine(_timed(Verdict.PASS), instructions, judgement, "")  # type: ignore[arg-type]
    data = {"settings": {"tolerance": 0.05, "alpha": 0.01, "comparisons": 1, "baselines": "b",
                         "measure": ["time", "instructions"], "instructions_tolerance": 0.01},
            "environments": {}, "counting": {"native": {"startup_s": 20.0, "refused": None},
                                             "qemu": {"startup_s": None, "refused": "TCG is too slow"}},
            "results": [json.loads(json.dumps(record.to_json()))]}
    lines = render_terminal(data)
    assert "instructions [who]" in lines[0]
    assert "1.03M +3.00% (code)" in lines[2] and lines[2].rstrip().endswith("regression")
    assert "instructions qemu: not counted, timings only: TCG is too slow" in lines
    assert any(line.startswith("REGRESSION") and "instructions +3.0% (attribution: code)" in line for line in lines)
    assert Record.from_json(data["results"][0]).instructions == record.instructions


def test_where_counting_cannot_run_the_reason_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_hostperf.environments.base import AgentLaunch, EnvironmentFailure
    from pytest_hostperf.environments.native import NativeEnvironment

    launch = AgentLaunch("python3", str(tmp_path), str(tmp_path), ("t.py",), (), "native")
    shim = tmp_path / "python3"
    shim.write_text("#!/bin/sh\nexec python3 \"$@\"\n")
    with pytest.raises(EnvironmentFailure, match="not the interpreter binary"):
        NativeEnvironment(tmp_path, python=str(shim)).start_counting_agent(launch)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EnvironmentFailure, match="apt-get install valgrind"):
        NativeEnvironment(tmp_path).start_counting_agent(launch)


def test_qemu_under_tcg_is_refused_with_the_reason_and_nothing_is_started() -> None:
    from types import SimpleNamespace

    from pytest_hostperf.run.count import InstructionCounting
    from pytest_hostperf.run.plan import Request
    from pytest_hostperf.run.pool import AgentArgs, EnvironmentState
    from pytest_hostperf.targets import Target

    class NeverStarted:
        name = "qemu"

        def start_counting_agent(self, launch: object) -> None:
            raise AssertionError("a counting agent was started under TCG")

    state = EnvironmentState("qemu", NeverStarted())  # type: ignore[arg-type]
    state.fingerprint = {"outside": {"accelerator": "tcg"}}
    settings = SimpleNamespace(baselines_dir=Path("baselines"))
    counting = InstructionCounting(SimpleNamespace(), settings, AgentArgs(()))  # type: ignore[arg-type]
    request = Request("t.py::test_x[qemu]", "t.py::test_x", Target("qemu", None))
    count = counting.count(request, state, 0.001)
    assert count.per_call is None and "software emulation" in count.reason and "840x" in count.reason
    assert counting.summary() == {"qemu": {"startup_s": None, "refused": count.reason}}
