"""Controller side of instruction counting: command, refusals, probe parsing, verdict rules.

Pure logic, no valgrind; the real counting is exercised by test_instructions_agent.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_hostperf import counting
from pytest_hostperf.agent import protocol


def test_a_script_is_refused_as_interpreter_and_the_message_says_what_to_use(tmp_path: Path) -> None:
    shim = tmp_path / "python3"
    shim.write_text("#!/usr/bin/env bash\nexec python3.11 \"$@\"\n")
    problem = counting.interpreter_problem(str(shim))
    assert problem is not None and "script" in problem and "pyenv shim" in problem and "bin/python" in problem


def test_the_real_interpreter_and_a_symlink_to_it_are_accepted(tmp_path: Path) -> None:
    real = os.path.realpath(sys.executable)
    link = tmp_path / "python"
    link.symlink_to(real)
    assert counting.interpreter_problem(real) is None
    assert counting.interpreter_problem(str(link)) is None


def test_a_non_elf_file_and_a_missing_file_are_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not an ELF" in (counting.interpreter_problem(str(text)) or "")
    assert "cannot read" in (counting.interpreter_problem(str(tmp_path / "missing")) or "")


def test_counting_argv_wraps_the_agent_in_callgrind_with_everything_off_at_start() -> None:
    agent = ["/opt/venv/bin/python", "-m", "pytest_hostperf.agent", "--env", "docker"]
    argv = counting.counting_argv(agent, "/dumps/", disable_aslr=True, machine="x86_64")
    assert argv[:3] == ["setarch", "x86_64", "-R"]
    assert argv[argv.index("valgrind") + 1:argv.index("valgrind") + 1 + len(counting.VALGRIND_OPTIONS)] == list(
        counting.VALGRIND_OPTIONS)
    assert "--instr-atstart=no" in argv and "--collect-atstart=no" in argv and "--vgdb=no" in argv
    assert "--callgrind-out-file=/dumps/callgrind.out" in argv
    assert argv[-len(agent):] == agent
    assert counting.counting_argv(agent, "/dumps", disable_aslr=False)[0] == "valgrind"


def test_counting_argv_without_an_agent_command_is_an_error() -> None:
    with pytest.raises(counting.CountingSetupError, match="empty"):
        counting.counting_argv([], "/dumps")


def test_counting_environ_fixes_the_hash_seed_and_names_the_dump_directory() -> None:
    environ = counting.counting_environ("/dumps/")
    assert environ == {"PYTHONHASHSEED": "0", "HOSTPERF_CALLGRIND_DIR": "/dumps", "PYTHONMALLOC": "malloc"}
    assert "PYTHONMALLOC" not in counting.counting_environ("/dumps", allocator=None)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"machine": "aarch64"}, "x86-64 only"),
    ({"machine": "x86_64", "slowdown": 12.0}, "software emulation"),
    ({"machine": "x86_64", "valgrind": None}, "apt-get install valgrind"),
])
def test_refusals_say_why_counting_cannot_work(kwargs: dict[str, object], expected: str) -> None:
    support = counting.refusal("qemu", **kwargs)  # type: ignore[arg-type]
    assert support is not None and not support.works and expected in (support.reason or "")
    assert support.describe().startswith("qemu: no instruction counting, timings only: ")


def test_a_capable_environment_is_left_to_the_probe() -> None:
    assert counting.refusal("docker", machine="x86_64", slowdown=1.0, valgrind="/usr/bin/valgrind") is None


def test_parse_probe_reads_the_protocol_line_among_other_output() -> None:
    line = protocol.encode({"event": "count-probe", "works": True, "reason": None, "per_call": 1234.0,
                            "noise": 0.0001, "software": {"id": "abc"}})
    support = counting.parse_probe("native", 0, b"valgrind chatter\n" + line, "")
    assert support.works and support.per_call == 1234.0 and support.software == {"id": "abc"}
    assert "works" in support.describe()


def test_parse_probe_without_an_answer_reports_the_exit_code_and_the_stderr_tail() -> None:
    support = counting.parse_probe("docker", 127, b"", "sh: 1: valgrind: not found\n")
    assert not support.works
    assert "exited with 127" in (support.reason or "") and "valgrind: not found" in (support.reason or "")
    assert "missing" in (support.reason or "")


@pytest.mark.parametrize(("per_call", "noise", "verdict", "reason"), [
    (1_005_000, 0.0, "pass", "instructions +0.50% (within 1%)"),
    (1_030_000, 0.001, "regression", "instructions +3.00%"),
    (970_000, 0.0, "improvement", "instructions -3.00%"),
    (1_030_000, 0.02, "unstable", "differ by 2.00%"),
    (1_200_000, 0.02, "regression", "instructions +20.00%"),
])
def test_judge_instructions(per_call: float, noise: float, verdict: str, reason: str) -> None:
    judgement = counting.judge_instructions(per_call, 1_000_000, noise=noise)
    assert judgement.verdict == verdict
    assert reason in judgement.reason
    assert judgement.ratio == pytest.approx(per_call / 1_000_000)


def test_judge_instructions_uses_the_larger_noise_and_a_custom_tolerance() -> None:
    assert counting.judge_instructions(1_030_000, 1_000_000, baseline_noise=0.02).verdict == "unstable"
    assert counting.judge_instructions(1_030_000, 1_000_000, tolerance=0.05).verdict == "pass"


def test_judge_instructions_refuses_a_non_positive_count() -> None:
    with pytest.raises(ValueError, match="positive"):
        counting.judge_instructions(0, 1_000_000)


def _changed(ratio: float) -> counting.InstructionJudgement:
    return counting.judge_instructions(ratio * 1_000_000, 1_000_000)


@pytest.mark.parametrize(("instructions", "time_verdict", "time_ci", "expected"), [
    (None, "pass", None, "none"),
    (None, "regression", (1.10, 1.20), "platform"),
    (1.0, "regression", (1.10, 1.20), "platform"),
    (1.0, "pass", (0.99, 1.01), "none"),
    (1.10, "pass", (0.99, 1.02), "code"),
    (1.10, "regression", (1.08, 1.13), "code"),      # time moved as much as the instructions
    (1.10, "regression", (1.30, 1.40), "both"),      # time moved far more: the platform too
    (0.90, "regression", (1.10, 1.20), "both"),      # code faster, time slower
])
def test_attribution(instructions: float | None, time_verdict: str, time_ci: tuple[float, float] | None,
                     expected: str) -> None:
    judgement = _changed(instructions) if instructions is not None else None
    assert counting.attribute(judgement, time_verdict, time_ci) == expected


def test_where_counting_works_lists_native_and_says_why_not_in_a_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    native = counting.CountingSupport("native", True, noise=0.0)
    monkeypatch.setattr(counting, "probe_native", lambda: native)  # the real probe: test_instructions_agent.py
    tcg = counting.where_counting_works(qemu_accelerator="tcg")
    assert tcg[0] is native
    assert tcg[1].environment == "qemu" and not tcg[1].works and "~12x slower" in (tcg[1].reason or "")
    kvm = counting.where_counting_works(qemu_accelerator="kvm")[1]
    assert not kvm.works and "no probe runs through the VM" in (kvm.reason or "")
    assert [s.environment for s in counting.where_counting_works()] == ["native"]


def test_dump_directory_gives_the_same_path_each_session_and_another_to_a_concurrent_one(tmp_path: Path) -> None:
    base = str(tmp_path / "dumps")
    with counting.DumpDirectory(base) as first:
        Path(first, "callgrind.out.1").write_text("summary: 1\n")
        with counting.DumpDirectory(base) as second:
            assert first.endswith("slot-00") and second.endswith("slot-01")
        assert not os.path.exists(second)
    assert not os.path.exists(first)  # emptied and removed
    with counting.DumpDirectory(base) as again:
        assert again == first and os.listdir(again) == []


def test_dump_directory_with_every_slot_taken_says_so(tmp_path: Path) -> None:
    base = str(tmp_path / "dumps")
    with counting.DumpDirectory(base, slots=1):
        with pytest.raises(counting.CountingSetupError, match="in use by other hostperf sessions"):
            counting.DumpDirectory(base, slots=1).__enter__()
