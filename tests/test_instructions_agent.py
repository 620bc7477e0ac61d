"""The counting agent: dump parsing, fingerprint, zygote, and real counts under valgrind.

The integration tests start the real agent under callgrind (``counting_argv``) on
tests/projects/counting, whose benchmarks have known relations: twice the loop counts
twice the instructions, fixtures and pedantic setups count nothing, a sleep counts
almost nothing. They assert those relations and the determinism, never a host speed.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from pytest_hostperf import images
from pytest_hostperf.agent import count_fingerprint
from pytest_hostperf.agent.client_requests import MachineCode, isa_level, unsupported_reason
from pytest_hostperf.agent.count_benchmark import BenchmarkCounting
from pytest_hostperf.agent.instructions import CallgrindDumps, CountingUnavailable, InstructionCounter, read_dump_total
from pytest_hostperf.agent.isolation import Zygote
from pytest_hostperf.agent.origins import ImportTracker
from pytest_hostperf.counting import PROBE_LABEL, probe_docker, probe_native
from pytest_hostperf.images.requirements import ImageDependencies

COUNTING = Path(__file__).parent / "projects" / "counting"
FILES = ["test_counted.py"]
#: Small blocks keep the tests quick; the relations hold at any block size.
TARGET = {"target_instructions": 300_000}
x86_64_only = pytest.mark.skipif(unsupported_reason() is not None, reason=str(unsupported_reason()))


def _client() -> Any:
    spec = importlib.util.spec_from_file_location(
        "counting_agent", Path(__file__).parent.parent / "benchmarks" / "counting_agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- dumps, fingerprint ---------------------------------------------------------------------

def test_read_dump_total_prefers_the_summary_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("# callgrind format\nevents: Ir\nsummary: 12345\n\nfn=(1) f\n0 12000\ntotals: 12000\n")
    assert read_dump_total(dump) == 12345
    dump.write_text("events: Ir\nfn=(1) f\n0 7\ntotals: 7\n")
    assert read_dump_total(dump) == 7
    dump.write_text("events: Ir\n")
    with pytest.raises(CountingUnavailable, match="neither"):
        read_dump_total(dump)


def test_take_latest_reads_the_newest_dump_and_removes_them_all(tmp_path: Path) -> None:
    for number, total in ((1, 10), (2, 20), (10, 100)):
        (tmp_path / f"callgrind.out.{number}").write_text(f"summary: {total}\n")
    (tmp_path / "callgrind.out").write_text("summary: 1\n")  # the exit dump: not a block's
    assert CallgrindDumps(tmp_path).take_latest() == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["callgrind.out"]
    with pytest.raises(CountingUnavailable, match=str(tmp_path)):
        CallgrindDumps(tmp_path).take_latest()


def test_loaded_libraries_keeps_the_interpreter_and_libc_objects() -> None:
    maps = ("55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/python3.11\n"
            "7f00-7f01 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f02-7f03 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f04-7f05 r-xp 00000000 08:01 3 /opt/py/lib/libpython3.11.so.1.0\n"
            "7f06-7f07 r-xp 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libm.so.6\n"
            "7f08-7f09 r-xp 00000000 08:01 5 /usr/lib/x86_64-linux-gnu/libz.so.1\n"
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    assert count_fingerprint.loaded_libraries(maps) == [
        "/opt/py/lib/libpython3.11.so.1.0", "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6"]


def test_package_list_is_normalised_and_sorted() -> None:
    dists = [SimpleNamespace(metadata={"Name": "pytest_benchmark"}, version="5.2.3"),
             SimpleNamespace(metadata={"Name": "Pytest"}, version="9.0.3"),
             SimpleNamespace(metadata={"Name": None}, version="1")]
    assert count_fingerprint.package_list(dists) == ["pytest-benchmark==5.2.3", "pytest==9.0.3"]


def test_fingerprint_id_follows_the_match_keys_only() -> None:
    base = {key: "x" for key in count_fingerprint.MATCH_KEYS}
    assert count_fingerprint.fingerprint_id({**base, "packages": ["a==1"]}) == count_fingerprint.fingerprint_id(base)
    other_level = {**base, "isa_level": "x86-64-v4"}
    assert count_fingerprint.fingerprint_id(other_level) != count_fingerprint.fingerprint_id(base)


@x86_64_only
def test_client_requests_are_harmless_outside_valgrind() -> None:
    code = MachineCode()
    assert code.running_on_valgrind() == 0
    assert code.request(0x1001, default=42) == 42
    assert isa_level(code).startswith("x86-64-v")
    with pytest.raises(CountingUnavailable, match="does not run under valgrind"):
        InstructionCounter.open()


def test_a_count_request_to_an_ordinary_agent_says_how_to_start_a_counting_one() -> None:
    answer = BenchmarkCounting().answer({"op": "count", "nodeid": "t.py::test_x"})
    assert answer["outcome"] == "skipped" and answer["instructions"] is None
    assert "counting_argv" in answer["instructions_reason"]


# -- the zygote -------------------------------------------------------------------------------

@pytest.fixture
def zygote_state() -> Iterator[list[int]]:
    yield []


def test_every_request_runs_in_a_fresh_copy_of_the_same_state(zygote_state: list[int], tmp_path: Path) -> None:
    def serve(request: dict[str, Any]) -> dict[str, Any]:
        zygote_state.append(request["value"])
        return {"seen": list(zygote_state), "pid": os.getpid()}

    def after() -> None:
        (tmp_path / f"after-{os.getpid()}").touch()

    zygote = Zygote(serve, after)
    try:
        first, second = zygote.call({"value": 1}), zygote.call({"value": 2})
    finally:
        zygote.close()
    assert first["seen"] == [1] and second["seen"] == [2]
    assert len({first["pid"], second["pid"], os.getpid()}) == 3
    assert zygote_state == []  # the agent itself never ran a request
    assert {p.name for p in tmp_path.iterdir()} == {f"after-{first['pid']}", f"after-{second['pid']}"}
    with pytest.raises(ChildProcessError):
        os.waitpid(zygote.pid, os.WNOHANG)


def test_the_zygote_setup_is_what_children_start_from_and_the_agent_never_sees() -> None:
    # The counting agent's import tracker is marked in the zygote only: children then
    # report only what their own run imports, while the agent's "ready" has everything.
    tracker = ImportTracker(".")
    zygote = Zygote(lambda request: {"modules": sorted(tracker.report())}, lambda: None, tracker.mark_seen)
    try:
        child = zygote.call({"nodeid": "t::x"})
    finally:
        zygote.close()
    assert child["modules"] == []
    assert "pytest" in tracker.report()  # the agent's own tracker was left alone


def test_a_child_that_dies_or_raises_becomes_an_error_result_and_the_zygote_lives_on() -> None:
    def serve(request: dict[str, Any]) -> dict[str, Any]:
        if request["how"] == "die":
            os._exit(3)
        if request["how"] == "raise":
            raise RuntimeError("boom in the child")
        return {"outcome": "passed"}

    zygote = Zygote(serve, lambda: None)
    try:
        died = zygote.call({"nodeid": "t::a", "how": "die"})
        raised = zygote.call({"nodeid": "t::b", "how": "raise"})
        fine = zygote.call({"nodeid": "t::c", "how": "ok"})
    finally:
        zygote.close()
    assert died["outcome"] == "error" and "died without an answer" in died["message"] and died["nodeid"] == "t::a"
    assert raised["outcome"] == "error" and "RuntimeError: boom in the child" in raised["message"]
    assert fine == {"outcome": "passed"}


# -- real counts under valgrind ------------------------------------------------------------------

def _need_valgrind() -> None:
    if unsupported_reason() is not None:
        pytest.skip(str(unsupported_reason()))
    if shutil.which("valgrind") is None:
        # CI installs valgrind (scripts/setup.sh): there a missing one is a failure, not a skip.
        missing = "valgrind is not installed (apt-get install valgrind; scripts/setup.sh does it)"
        pytest.fail(missing) if os.environ.get("CI") == "true" else pytest.skip(missing)


def _count_all(agent: Any, nodeids: list[str]) -> dict[str, dict[str, Any]]:
    return {nodeid.split("::")[-1]: agent.count(nodeid, **TARGET) for nodeid in nodeids}


@pytest.fixture(scope="module")
def counted() -> dict[str, Any]:
    """One counting agent counting every test (that counts repeat between agents and
    sessions is asserted end to end by tests/test_instructions_plugin.py)."""
    _need_valgrind()
    client = _client()
    with client.CountingAgent.native(COUNTING, FILES) as agent:
        nodeids = agent.ready["collected"]
        first = _count_all(agent, nodeids)
    return {"first": first}


def _per_call(answer: dict[str, Any]) -> float:
    assert answer["instructions"] is not None, answer.get("instructions_reason") or answer
    return float(answer["instructions"]["per_call"])


@pytest.mark.slow
def test_twice_the_work_counts_twice_the_instructions(counted: dict[str, Any]) -> None:
    ratio = _per_call(counted["first"]["test_loop[4000]"]) / _per_call(counted["first"]["test_loop[2000]"])
    assert 1.95 < ratio < 2.01  # the call itself adds a constant: slightly under 2


@pytest.mark.slow
def test_fixtures_and_pedantic_setup_are_not_counted(counted: dict[str, Any]) -> None:
    plain = _per_call(counted["first"]["test_loop[2000]"])
    for test in ("test_loop_after_heavy_fixture", "test_pedantic_setup_is_not_counted"):
        # Counted, the 300,000-iteration setup would be ~150x the call.
        assert _per_call(counted["first"][test]) == pytest.approx(plain, rel=0.01), test


@pytest.mark.slow
def test_a_sleep_counts_its_few_instructions_not_its_time(counted: dict[str, Any]) -> None:
    assert 0 < _per_call(counted["first"]["test_sleep"]) < _per_call(counted["first"]["test_loop[2000]"]) / 10


@pytest.mark.slow
def test_two_counts_of_a_test_in_one_session_agree(counted: dict[str, Any]) -> None:
    for test, answer in counted["first"].items():
        # A sleep's few instructions depend on how the kernel wakes it: time, not code.
        if answer["instructions"] is None or test == "test_sleep":
            continue
        assert answer["instructions"]["noise"] < 0.01, test
    # Allocation-heavy code reads the same in both blocks too: with the probe as block A
    # (before 2026-12-08) a 5,000-key dict build's blocks were 0.85% apart, now 0.02%.
    assert counted["first"]["test_dict_build"]["instructions"]["noise"] < 0.002


@pytest.mark.slow
def test_results_carry_outcome_reason_and_software(counted: dict[str, Any]) -> None:
    failed = counted["first"]["test_fails_after_counting"]
    assert failed["outcome"] == "failed" and failed["instructions"] is not None
    unused = counted["first"]["test_never_calls_benchmark"]
    assert unused["outcome"] == "passed" and unused["instructions"] is None
    assert "did not reach benchmark" in unused["instructions_reason"]
    software = counted["first"]["test_loop[2000]"]["software"]
    assert software["machine"] == platform.machine() and software["hash_seed"] == "0"
    assert software["allocator"] == "malloc" and software["valgrind"].startswith("valgrind-")
    assert software["id"] == count_fingerprint.fingerprint_id(software)


@pytest.mark.slow
def test_a_wrong_launch_is_refused_with_the_reason(tmp_path: Path) -> None:
    _need_valgrind()
    client = _client()
    with client.CountingAgent.native(COUNTING, FILES, valgrind=False) as agent:
        answer = agent.count(f"{FILES[0]}::test_loop[2000]")
    assert answer["outcome"] == "skipped" and "counting_argv" in answer["instructions_reason"]


@pytest.mark.slow
def test_the_probe_counts_natively() -> None:
    _need_valgrind()
    support = probe_native()
    assert support.works, support.reason
    assert support.per_call and support.per_call > 2000 and (support.noise or 0) < 0.01


# -- docker ------------------------------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.slow
def test_the_docker_probe_needs_valgrind_in_the_image(engine: Any, project_image: Any) -> None:
    """The counting base's project image counts, the plain one says valgrind is missing.

    (Counts in docker against native ones: tests/test_instructions_plugin.py.)
    """
    _need_valgrind()
    only_pytest = ImageDependencies(COUNTING, (), ("*",))  # the image the plugin tests share
    counting_image = images.ensure_image(engine, COUNTING, base=images.COUNTING_BASE_TAG, dependencies=only_pytest)
    with_valgrind = probe_docker(engine, counting_image.tag, counting_image.python)
    without = probe_docker(engine, project_image.tag, project_image.python)
    assert with_valgrind.works, with_valgrind.reason
    assert with_valgrind.software and with_valgrind.software["env_kind"] != "native"
    assert not without.works and "valgrind" in (without.reason or ""), without.reason
    assert not engine.containers.list(all=True, filters={"label": PROBE_LABEL}), "a probe container was left behind"
