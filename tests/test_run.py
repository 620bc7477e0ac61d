"""The run loop (run.pool, run.plan, run.judge, run.session) with fake in-process agents.

Milliseconds per test: no subprocess, no sleep (the confirmation pause is a fake). The
same rules run for real in tests/test_plugin.py through pytester and a native agent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fake_env import DIE, GARBLE, HANG, plan, samples, world

from pytest_hostperf.baselines import BaselineStore
from pytest_hostperf.model import Outcome, Record, SessionSummary, Verdict
from pytest_hostperf.options import DEFAULT_MAX_OVERHEAD
from pytest_hostperf.run.plan import CONFIRM_PAUSE_S, InterleavedBlocks, PlanRunner
from pytest_hostperf.run.session import SessionRun
from pytest_hostperf.stats import summarize

T1, T2 = "t.py::test_one", "t.py::test_two"


def ok(median: float, n: int = 40) -> dict[str, Any]:
    return {"samples": samples(median, n)}


def session(w: Any, tests: list[str], envs: list[str], options: dict[str, Any] | None = None,
            pauses: list[float] | None = None) -> SessionRun:
    run = SessionRun(plan(tests, envs, options), w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings,
                            sleep=(pauses.append if pauses is not None else lambda s: None))
    return run


def save_history(w: Any, env: str, test: str, medians: list[float], reference: float = 1e-3) -> None:
    """Saved sessions for ``test`` in ``env``'s baseline, each with the host reference beside it."""
    state = w.pool.state(env)
    w.pool.agent(env, plan([test], [env]).agent_args)  # identifies the environment
    store = BaselineStore(w.settings.baselines_dir)
    for i, median in enumerate(medians):
        data = samples(median)
        ref = SessionSummary(reference, 0.01, 15)
        record = Record(test, env, samples=tuple(data), summary=summarize(data), references=(ref,))
        store.save(state.backend.name, state.fingerprint_id, state.match, state.fingerprint, [record], f"s{i}")


# -- plan: interleaving ------------------------------------------------------------------------

def test_targets_are_measured_in_interleaved_blocks_with_a_share_of_the_time(tmp_path: Path) -> None:
    # --hostperf-pair-budget=0: blocks instead of pairs (pairs: tests/test_paired_run.py)
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(1.1e-3)]}}, pair_budget_s=0)
    run = session(w, [T1], ["native", "docker"], {"max_time": 0.3, "min_rounds": 5})
    run.run_test(T1)
    assert w.runs() == [("native", T1), ("docker", T1)] * 3
    budgets = [m["benchmark_options"]["max_time"] for kind, _, m in w.log if kind == "run"]
    assert budgets == [pytest.approx(0.1)] * 6
    native, docker = run.records[f"{T1}[native]"], run.records[f"{T1}[docker]"]
    assert len(native.samples) == 120  # three blocks of 40 rounds, pooled
    assert docker.ratio_to_native is not None and docker.ratio_to_native.ratio == pytest.approx(1.1, rel=0.01)
    assert native.ratio_to_native is None


def test_one_environment_is_measured_in_one_block(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}})
    run = session(w, [T1], ["native"], {"max_time": 0.3})
    run.run_test(T1)
    run.run_test(T1)  # a second item of the same group measures nothing again
    assert w.runs() == [("native", T1)]
    assert [m["benchmark_options"]["max_time"] for kind, _, m in w.log if kind == "run"] == [0.3]


def test_a_failed_target_is_not_measured_again_in_later_blocks(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [{"outcome": "failed", "message": "boom"}]}},
              pair_budget_s=0)
    run = session(w, [T1], ["native", "docker"])
    run.run_test(T1)
    assert w.runs() == [("native", T1), ("docker", T1), ("native", T1), ("native", T1)]
    assert run.records[f"{T1}[docker]"].outcome is Outcome.FAILED
    assert run.records[f"{T1}[docker]"].fails


def test_a_strategy_plugs_in_beside_blocks(tmp_path: Path) -> None:
    class Reversed(InterleavedBlocks):
        def measure(self, requests: Any, run: Any, options: Any) -> Any:
            return super().measure(list(reversed(requests)), run, options)

    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(1e-3)]}})
    run = SessionRun(plan([T1], ["native", "docker"]), w.pool, w.settings, DEFAULT_MAX_OVERHEAD,
                     strategy=Reversed(2))
    run.run_test(T1)
    assert w.runs() == [("docker", T1), ("native", T1)] * 2


# -- plan: confirmation and the host guard -----------------------------------------------------

def test_a_regression_is_re_measured_after_a_pause_and_the_fastest_attempt_judged(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(2e-3), ok(1e-3)]}})
    save_history(w, "native", T1, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3])
    pauses: list[float] = []
    run = session(w, [T1], ["native"], pauses=pauses)
    run.run_test(T1)
    record = run.records[f"{T1}[native]"]
    assert pauses == [CONFIRM_PAUSE_S]
    assert w.runs() == [("native", T1)] * 2
    assert record.verdict is Verdict.PASS
    assert record.attempt_medians_s == (pytest.approx(2e-3), pytest.approx(1e-3))
    assert record.median_s == pytest.approx(1e-3)
    assert "re-measured 1x after a pause" in record.reason


def test_a_real_regression_stays_after_every_confirmation(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(2e-3)]}}, confirm=2)
    save_history(w, "native", T1, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3])
    pauses: list[float] = []
    run = session(w, [T1], ["native"], pauses=pauses)
    run.run_test(T1)
    record = run.records[f"{T1}[native]"]
    assert len(pauses) == 2 and len(record.attempt_medians_s) == 3
    assert record.verdict is Verdict.REGRESSION and record.fails
    assert "re-measured 2x" in record.reason


def test_confirm_zero_judges_the_first_attempt(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(2e-3), ok(1e-3)]}}, confirm=0)
    save_history(w, "native", T1, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3])
    pauses: list[float] = []
    run = session(w, [T1], ["native"], pauses=pauses)
    run.run_test(T1)
    assert pauses == [] and run.records[f"{T1}[native]"].verdict is Verdict.REGRESSION


def test_host_guard_blames_a_slow_host_for_a_slowdown_it_explains(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1.5e-3)]}}, confirm=1)
    w.backends["native"].reference = lambda: samples(1.6e-3, 15)  # the machine runs 1.6x slow now
    save_history(w, "native", T1, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3], reference=1e-3)
    run = session(w, [T1], ["native"])
    run.run_test(T1)
    record = run.records[f"{T1}[native]"]
    assert record.verdict is Verdict.UNSTABLE and "host slow" in record.reason
    assert record.host_slowdown == pytest.approx(1.6, rel=0.02)
    assert len(record.attempt_medians_s) == 2  # re-measured in case the machine was back to speed
    references = [m for kind, _, m in w.log if kind == "reference"]
    assert len(references) == 4  # before and after, for each of the two attempts


def test_references_are_skipped_without_a_baseline_or_a_save(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}})
    session(w, [T1], ["native"]).run_test(T1)
    assert not [m for kind, _, m in w.log if kind == "reference"]


# -- pool: faults fail one item, the agent is restarted ----------------------------------------

@pytest.mark.parametrize("fault, message", [
    (DIE, "the agent crashed while running t.py::test_one"),
    (HANG, "did not finish within 5 s"),
    (GARBLE, "malformed answer from the agent"),
    ({"samples": [1e-3, float("nan")]}, "samples[1] is nan"),
    ({"samples": [0.0, 1e-3]}, "a timing must be positive"),
    ({"samples": "fast"}, "expected a list of seconds"),
    ({"outcome": "maybe"}, "outcome is 'maybe'"),
    ({"iterations": "many"}, "iterations is 'many'"),
])
def test_an_agent_fault_fails_one_item_and_the_next_gets_a_fresh_agent(tmp_path: Path, fault: Any,
                                                                        message: str) -> None:
    w = world(tmp_path, {"native": {T1: [fault], T2: [ok(1e-3)]}})
    run = session(w, [T1, T2], ["native"])
    run.run_test(T1)
    run.run_test(T2)
    first, second = run.records[f"{T1}[native]"], run.records[f"{T2}[native]"]
    assert first.outcome is Outcome.FAILED and message in first.reason
    assert second.outcome is Outcome.PASSED and second.verdict is Verdict.NO_BASELINE
    assert w.backends["native"].starts == 2  # the pool asked the backend for a fresh agent
    assert w.backends["native"].agents[0].closed


def test_an_environment_that_cannot_start_skips_its_items_or_errors_when_required(tmp_path: Path) -> None:
    for required, outcome in (((), Outcome.SKIPPED), (("docker",), Outcome.ERROR)):
        w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(1e-3)]}}, require=required)

        def broken(launch: Any) -> Any:
            raise RuntimeError("engine said no")

        w.backends["docker"].start_agent = broken  # type: ignore[method-assign]
        run = session(w, [T1], ["native", "docker"])
        run.run_test(T1)
        record = run.records[f"{T1}[docker]"]
        assert record.outcome is outcome and "engine said no" in record.reason
        assert run.records[f"{T1}[native]"].outcome is Outcome.PASSED
        assert w.backends["docker"].stopped >= 1


def test_stop_all_shuts_agents_down_and_stops_backends_once_each_call(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}})
    session(w, [T1], ["native"]).run_test(T1)
    w.pool.stop_all()
    w.pool.stop_all()
    assert w.backends["native"].agents[0].closed and w.backends["native"].stopped == 2


def test_prestart_starts_agents_in_the_background(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(1e-3)]}})
    w.pool.prestart(["native", "docker"], plan([T1], ["native"]).agent_args)
    w.pool.prestart(["native"], plan([T1], ["native"]).agent_args)  # already asked: ignored
    w.pool.wait_for_prestarts()
    assert [w.backends[e].starts for e in ("native", "docker")] == [1, 1]
    assert w.pool.state("docker").fingerprint_id and w.pool.state("docker").startup_s is not None
    w.pool.stop_all()


# -- judge --------------------------------------------------------------------------------------

def test_overhead_over_budget_fails_the_item(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(2e-3)]}})
    run = session(w, [T1], ["native", "docker"])
    run.run_test(T1)
    docker = run.records[f"{T1}[docker]"]
    assert docker.verdict is Verdict.OVERHEAD and "exceeds budget 1.50x" in docker.reason
    assert docker.fails


def test_an_unreadable_baseline_is_an_error_naming_the_file(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}})
    save_history(w, "native", T1, [1e-3])
    (path,) = w.settings.baselines_dir.glob("native-*.json")
    path.write_text(path.read_text().replace('"median_s": 0.001', '"median_s": NaN', 1))
    run = session(w, [T1], ["native"])
    run.run_test(T1)
    record = run.records[f"{T1}[native]"]
    assert record.outcome is Outcome.ERROR and record.fails
    assert str(path) in record.reason and "[0].context.reference.median_s is nan" in record.reason


def test_a_missing_baseline_says_which_fingerprint_keys_differ(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}})
    save_history(w, "native", T1, [1e-3])
    (path,) = w.settings.baselines_dir.glob("native-*.json")
    other = path.with_name("native-0123456789ab.json")
    path.rename(other)
    other.write_text(other.read_text().replace('"Fake CPU"', '"Other CPU"').replace(path.stem[7:], "0123456789ab"))
    run = session(w, [T1], ["native"])
    run.run_test(T1)
    record = run.records[f"{T1}[native]"]
    assert record.verdict is Verdict.NO_BASELINE
    assert "differs from baselines/native-0123456789ab.json in: cpu_model" in record.reason
    (env,) = run.environment_reports()
    assert env.uncovered is not None and "cpu_model" in env.uncovered


def test_accepting_a_regression_marks_it_and_keeps_it_savable(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(2e-3)], T2: [ok(2e-3)]}}, save=True, accept=("*test_one*",),
              accept_reason="new parser (#12)", confirm=0)
    save_history(w, "native", T1, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3])
    save_history(w, "native", T2, [1e-3, 1.01e-3, 0.99e-3, 1.005e-3, 0.995e-3])
    run = session(w, [T1, T2], ["native"])
    run.run_test(T1)
    run.run_test(T2)
    accepted, refused = run.records[f"{T1}[native]"], run.records[f"{T2}[native]"]
    assert accepted.verdict is Verdict.REGRESSION and accepted.accepted == "new parser (#12)"
    assert not accepted.fails and refused.fails
    assert [r.test for r in run.savable()] == [T1]
    run.save_baselines()
    baseline = BaselineStore(w.settings.baselines_dir).load("native", w.pool.state("native").fingerprint_id)
    assert baseline is not None
    assert baseline.history(T1, "-")[-1].context["accepted"] == {"reason": "new parser (#12)",
                                                                 "verdict": "regression"}
    assert len(baseline.history(T2, "-")) == 5  # the refused regression did not become the baseline


def test_report_is_built_from_records_not_the_session(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "docker": {T1: [ok(1.02e-3)]}})
    run = session(w, [T1], ["native", "docker"])
    run.run_test(T1)
    data = run.report()
    assert [r["item"] for r in data["results"]] == [f"{T1}[native]", f"{T1}[docker]"]
    assert data["settings"]["comparisons"] == 2 and set(data["environments"]) == {"native", "docker"}
    for raw in data["results"]:
        again = Record.from_json(raw)
        assert again.to_json() == raw
    assert not math.isnan(data["environments"]["docker"]["orchestration_ms_median"])


# -- the session's work dir --------------------------------------------------------------------

def test_work_dirs_of_dead_sessions_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from pytest_hostperf.environments import labels
    from pytest_hostperf.run import workdir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    root = tmp_path
    mine = workdir.create("live")
    assert oct(mine.stat().st_mode & 0o777) == "0o700" and (mine / workdir.OWNER_FILE).is_file()

    def owned(name: str, **changes: str) -> Path:
        directory = root / name
        directory.mkdir()
        owner_file = labels.write_owner_file(directory, "s1")
        owner_file.write_text(json.dumps({**json.loads(owner_file.read_text()), **changes}))
        return directory

    stale = owned("hostperf-dead-x1", **{labels.PID: dead.stdout.strip()})
    recycled = owned("hostperf-recycled-x2", **{labels.STARTED: "1"})  # our pid, another start time
    alive = owned("hostperf-alive-x3")
    foreign = root / "hostperf-foreign-x4"  # no owner file: not one of ours, left alone
    foreign.mkdir()
    try:
        assert sorted(p.name for p in workdir.sweep_stale(root)) == ["hostperf-dead-x1", "hostperf-recycled-x2"]
        assert alive.exists() and foreign.exists() and not stale.exists() and not recycled.exists()
    finally:
        workdir.remove(mine)
    assert not mine.exists()


# -- mounts a backend offers on request ----------------------------------------------------------

def _mount_plan(test: str, targets: list[tuple[str, str | None]]) -> Any:
    from fake_env import AgentArgs, Plan, Request, Target

    requests = tuple(Request(f"{test}[{env}-{mount}]", test, Target(env, mount)) for env, mount in targets)
    return Plan(requests, AgentArgs(("t.py",)), {})


def _mount_session(w: Any, plan: Any) -> SessionRun:
    run = SessionRun(plan, w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings, sleep=lambda s: None)
    return run


def test_backends_learn_the_mounts_and_one_they_cannot_serve_skips_or_errors(tmp_path: Path) -> None:
    for required, outcome in (((), Outcome.SKIPPED), (("vm",), Outcome.ERROR)):
        # interleaved blocks (--hostperf-pair-budget=0): the count below is three blocks
        w = world(tmp_path, {"native": {T1: [ok(1e-3)]}, "vm": {T1: [ok(2e-3)]}}, require=required, pair_budget_s=0)
        told: list[list[str]] = []
        w.backends["vm"].use_mounts = told.append  # type: ignore[method-assign]
        w.backends["vm"].mount_problem = (  # type: ignore[method-assign]
            lambda mount: "the NFS share needs root" if mount == "share-nfs" else None)
        run = _mount_session(w, _mount_plan(T1, [("native", "host"), ("vm", "share"), ("vm", "share-nfs")]))
        run.start()
        run.run_test(T1)
        assert [list(names) for names in told] == [["share", "share-nfs"]]   # once, before the agent starts
        nfs = run.records[f"{T1}[vm-share-nfs]"]
        assert nfs.outcome is outcome and "mount 'share-nfs' is not available here: the NFS share needs root" \
            in nfs.reason
        assert run.records[f"{T1}[vm-share]"].outcome is Outcome.PASSED
        assert ("vm", T1) in w.runs() and len([r for r in w.runs() if r[0] == "vm"]) == 3   # share only, 3 blocks
        w.pool.stop_all()


def _share_answer(options: str) -> dict[str, Any]:
    return {**ok(1e-3), "mount_info": {"share": {"fstype": "9p", "options": options}}}


def test_a_baseline_saved_on_other_share_options_is_not_compared(tmp_path: Path) -> None:
    usual = "rw,sync,dirsync,access=client,msize=512000,trans=virtio"
    for options, compared in ((usual, True), ("rw,cache=loose,access=client,msize=512000,trans=virtio", False)):
        w = world(tmp_path, {"vm": {T1: [_share_answer(usual)]}}, save=True)
        w.backends["vm"].mount_facts = lambda mount: {"security_model": "mapped-xattr"}  # type: ignore[method-assign]
        first = _mount_session(w, _mount_plan(T1, [("vm", "share")]))
        first.run_test(T1)
        record = first.records[f"{T1}[vm-share]"]
        assert record.mount_info["share"]["outside"] == {"security_model": "mapped-xattr"}   # the backend's facts
        assert record.mount_signature == "9p cache=none msize=512000 trans=virtio security_model=mapped-xattr"
        first.save_baselines()
        w.backends["vm"].script[T1] = [_share_answer(options)]
        again = _mount_session(w, _mount_plan(T1, [("vm", "share")]))
        again.run_test(T1)
        judged = again.records[f"{T1}[vm-share]"]
        if compared:
            assert judged.verdict is not Verdict.NO_BASELINE and judged.baseline_sessions == 1, judged.reason
        else:
            assert judged.verdict is Verdict.NO_BASELINE and "cache=loose" in judged.reason, judged.reason
        w.pool.stop_all()
        for path in w.settings.baselines_dir.glob("*.json"):
            path.unlink()
