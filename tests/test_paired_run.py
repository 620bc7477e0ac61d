"""The ratio to native from pairs (run.paired, plan.PairedToNative) with fake in-process agents.

Milliseconds: no subprocess. The same loop runs for real against Docker in
tests/test_docker_plugin.py (a CPU quota doubles the paired ratio; no quota reads ~1).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
from fake_env import plan, world

from pytest_hostperf.model import Outcome, Record, Verdict
from pytest_hostperf.options import DEFAULT_MAX_OVERHEAD
from pytest_hostperf.run.paired import MIN_PAIRS, PairBudget
from pytest_hostperf.run.plan import PlanRunner
from pytest_hostperf.run.session import SessionRun

T1 = "t.py::test_one"


def per_call(seconds: float, noise: float = 0.0, seed: int = 1) -> Any:
    """An agent answer: one round of ``fixed`` iterations (or 40 calibration rounds) at ``seconds`` per call."""
    rng = random.Random(seed)

    def answer(message: dict[str, Any]) -> dict[str, Any]:
        fixed = message.get("fixed")
        rounds = fixed["rounds"] if fixed else 40
        values = [seconds * math.exp(rng.gauss(0, noise)) for _ in range(rounds)]
        return {"samples": values, "iterations": fixed["iterations"] if fixed else 1}

    return answer


def measured(w: Any, envs: list[str]) -> SessionRun:
    run = SessionRun(plan([T1], envs), w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings, sleep=lambda s: None)
    run.run_test(T1)
    return run


def runs(w: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(env, m) for kind, env, m in w.log if kind == "run"]


def test_each_side_is_calibrated_then_measured_in_balanced_random_order_pairs(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(2e-3)]}})
    run = measured(w, ["native", "docker"])
    log = runs(w)
    # Calibration: one call, then one unmeasured fixed half per side.
    assert [env for env, _ in log[:4]] == ["native", "native", "docker", "docker"]
    assert log[0][1]["fixed"] == log[2][1]["fixed"] == {"iterations": 1, "rounds": 1}
    assert log[1][1]["fixed"] == {"iterations": 2, "rounds": 1}   # 2 ms halves of 1 ms calls
    assert log[3][1]["fixed"] == {"iterations": 1, "rounds": 1}
    # Then both items are held in their agents: one warm held half each, unmeasured.
    kinds = [(kind, env) for kind, env, _ in w.log if kind != "reference"]
    assert kinds[4:6] == [("hold", "native"), ("hold", "docker")]
    assert kinds[6:8] == [("run", "native"), ("run", "docker")] and log[4][1]["fixed"] == log[1][1]["fixed"]
    assert kinds[-2:] == [("release", "native"), ("release", "docker")]
    pairs = [(log[i][0], log[i + 1][0]) for i in range(6, len(log), 2)]
    assert all(set(pair) == {"native", "docker"} for pair in pairs)  # one half of each, every pair
    docker_first = sum(first == "docker" for first, _ in pairs)
    assert abs(2 * docker_first - len(pairs)) <= 1 and pairs[:8] != [pairs[0]] * 8
    to_native = run.records[f"{T1}[docker]"].ratio_to_native
    assert to_native is not None and to_native.pairs == len(pairs)
    assert to_native.ratio == pytest.approx(2.0) and "Hodges-Lehmann" in to_native.method
    # The halves are each side's samples (what a baseline keeps).
    native = run.records[f"{T1}[native]"]
    assert len(native.samples) == len(pairs) and native.iterations == 2
    assert native.ratio_to_native is None


def test_the_overhead_rule_holds_the_paired_interval_to_the_budget(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [per_call(1e-3, 0.05)]}, "docker": {T1: [per_call(2e-3, 0.05, seed=2)]}})
    docker = measured(w, ["native", "docker"]).records[f"{T1}[docker]"]
    assert docker.ratio_to_native is not None and docker.ratio_to_native.ci_low > 1.5
    assert docker.verdict is Verdict.OVERHEAD and "exceeds budget 1.50x" in docker.reason and docker.fails


def test_equal_sides_read_an_interval_around_one(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [per_call(1e-3, 0.1)]}, "docker": {T1: [per_call(1e-3, 0.1, seed=7)]}},
              max_overhead={"docker": 1.05})
    docker = measured(w, ["native", "docker"]).records[f"{T1}[docker]"]
    ratio = docker.ratio_to_native
    assert ratio is not None and ratio.ci_low < 1 < ratio.ci_high and ratio.ci_high < 1.1
    assert docker.verdict is not Verdict.OVERHEAD


def test_pairs_are_reproducible_within_a_session(tmp_path: Path) -> None:
    orders = []
    for attempt in range(2):
        w = world(tmp_path / str(attempt), {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(1e-3)]}})
        measured(w, ["native", "docker"])
        orders.append([env for env, _ in runs(w)])
    assert orders[0] == orders[1]


def test_a_side_that_fails_while_pairing_fails_alone(tmp_path: Path) -> None:
    failing = [per_call(1e-3)] * 10 + [{"outcome": "failed", "message": "boom"}]
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: failing}})
    run = measured(w, ["native", "docker"])
    docker, native = run.records[f"{T1}[docker]"], run.records[f"{T1}[native]"]
    assert docker.outcome is Outcome.FAILED and "boom" in docker.reason and docker.ratio_to_native is None
    assert native.outcome is Outcome.PASSED and native.samples
    assert len(runs(w)) < 30  # pairing stopped at the failure


def test_a_native_side_that_fails_leaves_the_others_measured_on_their_own(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [{"outcome": "failed", "message": "native boom"}]},
                         "docker": {T1: [per_call(1e-3)]}})
    run = measured(w, ["native", "docker"])
    native, docker = run.records[f"{T1}[native]"], run.records[f"{T1}[docker]"]
    assert native.outcome is Outcome.FAILED
    assert docker.outcome is Outcome.PASSED and docker.samples and docker.ratio_to_native is None
    assert [env for env, _ in runs(w)] == ["native", "docker", "docker", "docker"]


def test_a_test_that_never_calls_the_benchmark_is_not_paired(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [{"samples": None}]}, "docker": {T1: [{"samples": None}]}})
    run = measured(w, ["native", "docker"])
    records: list[Record] = [run.records[f"{T1}[{env}]"] for env in ("native", "docker")]
    assert all(r.outcome is Outcome.PASSED and not r.samples and "did not call" in r.reason for r in records)
    assert len(runs(w)) == 2


def test_without_a_pair_budget_targets_are_measured_in_blocks(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(1e-3)]}}, pair_budget_s=0)
    measured(w, ["native", "docker"])
    assert all("fixed" not in m for _, m in runs(w)) and len(runs(w)) == 6


def test_the_budget_sizes_halves_and_stops_pairing_when_spent() -> None:
    budget = PairBudget(side_s=0.4, round_s=0.002, max_pairs=300)
    assert budget.iterations(1e-3) == 2 and budget.iterations(1e-6) == 2000 and budget.iterations(0.5) == 1
    assert not budget.enough(100, 0.79, 0.99) and budget.enough(100, 0.8, 0.99)  # 0.4 s per side
    assert MIN_PAIRS == 40 and not budget.enough(MIN_PAIRS - 1, 5.0, 0.99)  # enough for the drift guard
    assert budget.enough(300, 0.01, 0.99)                 # capped
    # Enough pairs to reach a strict family-wise confidence (2 * 2^-n <= 1 - confidence).
    assert budget.least_pairs(1 - 2e-6) >= 21 and not budget.enough(20, 5.0, 1 - 2e-6)


def test_pairing_stops_when_the_wall_clock_budget_is_spent(tmp_path: Path) -> None:
    ticks = itertools.count()
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(1e-3)]}}, pair_budget_s=1.5)
    run = SessionRun(plan([T1], ["native", "docker"]), w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings, sleep=lambda s: None,
                            clock=lambda: next(ticks) * 0.05)  # each look at the clock: 50 ms later
    run.run_test(T1)
    to_native = run.records[f"{T1}[docker]"].ratio_to_native
    assert to_native is not None and to_native.pairs == 60  # 3 s of both sides, one look per pair


def test_a_target_too_slow_to_ask_for_pairs_is_measured_on_its_own(tmp_path: Path) -> None:
    # Each look at the clock 1 s later: a warm half costs ~1 s around its 2 ms of calls on
    # each side, so the least pairs would spend 80 s, over the cap (ten budgets, at least
    # 10 s); a TCG VM's requests are like that. A quota's long halves are timed work.
    budget = PairBudget(side_s=0.4)
    assert budget.worth_pairing(0.015, 0.02) and not budget.worth_pairing(0.015, 0.5)
    assert PairBudget(side_s=0.1).worth_pairing(0.1, 0.1)   # 8 s: within the 10 s floor
    ticks = itertools.count()
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(2e-3)]}})
    run = SessionRun(plan([T1], ["native", "docker"]), w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings, sleep=lambda s: None,
                            clock=lambda: float(next(ticks)))
    run.run_test(T1)
    docker = run.records[f"{T1}[docker]"]
    assert docker.outcome is Outcome.PASSED and docker.samples
    assert docker.ratio_to_native is not None and not docker.ratio_to_native.pairs
    assert docker.ratio_to_native.method.startswith("bootstrap"), docker.ratio_to_native
    assert 1.5 < docker.ratio_to_native.ratio < 2.5, docker.ratio_to_native
    # After the calibration: one warm held half per side told the cost, then no pairs.
    assert [env for env, m in runs(w)[4:] if m.get("hold")] == ["native", "docker"]
    assert not [m for env, m in runs(w)[4:] if not m.get("hold") and (m.get("fixed") or {}).get("iterations", 0) > 1]


def test_a_side_that_cannot_be_held_makes_both_sides_use_whole_requests(tmp_path: Path) -> None:
    # benchmark.pedantic never reaches the calibration a held item stops in: the agent
    # answers the hold with a result, and both sides' halves are whole requests (alike).
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(2e-3)]}})
    w.backends["docker"].holds = False
    docker = measured(w, ["native", "docker"]).records[f"{T1}[docker]"]
    kinds = [(kind, env) for kind, env, _ in w.log if kind != "reference"]
    assert ("hold", "native") in kinds and ("release", "native") in kinds and ("hold", "docker") not in kinds
    # docker's hold ran as one whole request (answered at once); no held half was asked.
    assert [env for env, m in runs(w) if m.get("hold")] == ["docker"]
    assert docker.ratio_to_native is not None and docker.ratio_to_native.pairs >= MIN_PAIRS
    assert docker.ratio_to_native.ratio == pytest.approx(2.0)


def test_an_agent_that_dies_while_held_fails_its_item_and_is_restarted(tmp_path: Path) -> None:
    dying = [per_call(1e-3)] * 6 + ["die"]
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: dying}})
    run = measured(w, ["native", "docker"])
    docker, native = run.records[f"{T1}[docker]"], run.records[f"{T1}[native]"]
    assert docker.outcome is Outcome.FAILED and "crashed" in docker.reason and docker.ratio_to_native is None
    assert native.outcome is Outcome.PASSED and native.samples
    assert ("release", "native") in [(kind, env) for kind, env, _ in w.log]


def test_a_target_with_a_cpu_quota_is_measured_on_its_own_in_sustained_rounds(tmp_path: Path) -> None:
    # Pairs give the container idle time (native's halves) that its quota refunds.
    w = world(tmp_path, {"native": {T1: [per_call(1e-3)]}, "docker": {T1: [per_call(2e-3)]}})
    w.backends["docker"].fingerprint["cpu_quota"] = 0.5
    docker = measured(w, ["native", "docker"]).records[f"{T1}[docker]"]
    assert docker.ratio_to_native is not None and not docker.ratio_to_native.pairs
    assert docker.ratio_to_native.method.startswith("bootstrap"), docker.ratio_to_native
    assert not [kind for kind, _, _ in w.log if kind == "hold"]
    # Native on its own; docker in rounds of 0.25 s of native's calls (1 ms each), 5 of them.
    assert [(env, m.get("fixed")) for env, m in runs(w)][-2:] == [
        ("native", None), ("docker", {"iterations": 250, "rounds": 5})]
