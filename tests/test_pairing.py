"""pytest_hostperf.pairing: the schedule, the paired estimate, its drift guard and verdicts.

The rank statistics underneath are checked against reference values in
test_signedrank.py; here the paired layer is checked against scipy.stats, hand formulas
and simulated machines whose truth is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_hostperf import pairing, signedrank
from pytest_hostperf.verdict import Verdict


def test_large_comparison_uses_selection_and_agrees_with_scipy_p():
    d = np.random.default_rng(3).normal(0.02, 0.05, 2500)
    e = pairing.estimate_log_ratios(d, 0.999)
    assert e.pairs == 2500 and e.ci_low < e.ratio < e.ci_high
    assert math.log(e.ratio) == pytest.approx(0.02, abs=0.004)
    assert e.p_slower == pytest.approx(
        sps.wilcoxon(d, alternative="greater", method="asymptotic", correction=True).pvalue, rel=1e-6)


# -- edge cases --------------------------------------------------------------------------------

def test_one_pair_proves_nothing():
    e = pairing.estimate([1.0], [1.5], 0.99)
    assert e.ratio == pytest.approx(1.5)
    assert (e.ci_low, e.ci_high) == (0.0, math.inf)
    assert e.achieved_confidence == 0.0 and not e.reached_confidence
    j = pairing.judge(e, 0.05)
    assert j.verdict == "inconclusive" and "too few pairs" in j.reason and "at least 8" in j.reason


def test_two_pairs_reach_half_confidence():
    e = pairing.estimate([1.0, 1.0], [1.2, 1.3], 0.5)
    assert e.achieved_confidence == pytest.approx(0.5)
    assert (e.ci_low, e.ci_high) == pytest.approx((1.2, 1.3))
    assert pairing.estimate([1.0, 1.0], [1.2, 1.3], 0.9).ci_high == math.inf


def test_identical_timings_read_exactly_one_and_pass():
    e = pairing.estimate([2e-3] * 40, [2e-3] * 40, 0.99)
    assert (e.ratio, e.ci_low, e.ci_high) == (1.0, 1.0, 1.0)
    assert (e.p_slower, e.p_faster) == (1.0, 1.0)
    assert pairing.judge(e, 0.05).verdict == "pass"


def test_all_ratios_tied_but_not_one():
    e = pairing.estimate([1.0] * 20, [1.25] * 20, 0.99)
    assert (e.ratio, e.ci_low, e.ci_high) == pytest.approx((1.25, 1.25, 1.25))
    assert e.p_slower == pytest.approx(sps.wilcoxon([math.log(1.25)] * 20, alternative="greater",
                                                    correction=True, method="asymptotic").pvalue, rel=1e-9)
    assert pairing.judge(e, 0.05).verdict == "regression"


@pytest.mark.parametrize("reference,candidate,fragment", [
    ([1.0, float("nan")], [1.0, 1.0], "reference timing of pair 1"),
    ([1.0, 1.0], [1.0, -2.0], "candidate timing of pair 1"),
    ([0.0, 1.0], [1.0, 1.0], "reference timing of pair 0"),
    ([1.0, 1.0], [float("inf"), 1.0], "candidate timing of pair 0"),
    ([1.0, 1.0], [1.0], "equal length"),
    ([], [], "no pairs"),
])
def test_bad_timings_are_refused_by_name(reference, candidate, fragment):
    with pytest.raises(ValueError, match=fragment):
        pairing.estimate(reference, candidate, 0.99)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_confidence_outside_zero_one_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence"):
        pairing.estimate([1.0] * 5, [1.0] * 5, confidence)


# -- the schedule ------------------------------------------------------------------------------

def test_schedule_is_balanced_shuffled_and_reproducible():
    schedule = pairing.PairSchedule(121, seed="test_x[native]")
    orders = list(schedule)
    assert len(schedule) == len(orders) == 121
    assert sum(first == "candidate" for first, _ in orders) == 61
    assert all(set(order) == {"candidate", "reference"} for order in orders)
    assert orders == list(pairing.PairSchedule(121, seed="test_x[native]"))
    assert orders != list(pairing.PairSchedule(121, seed="test_x[docker]"))
    assert [schedule.order(i) for i in range(121)] == orders
    # Shuffled, not alternating or in halves: some runs of equal order and many switches.
    switches = sum(a != b for a, b in zip(orders, orders[1:]))
    assert 30 < switches < 90


@pytest.mark.parametrize("pairs", [0, -3, 2.5, True])
def test_schedule_refuses_a_bad_number_of_pairs(pairs):
    with pytest.raises(ValueError, match="positive number of pairs"):
        pairing.PairSchedule(pairs, seed=0)  # type: ignore[arg-type]


# -- the judgement -----------------------------------------------------------------------------

def _judged(centre: float, sd: float, n: int, tolerance: float = 0.05, seed: int = 0) -> pairing.PairedJudgement:
    d = math.log(centre) + np.random.default_rng(seed).normal(0, sd, n)
    return pairing.judge(pairing.estimate_log_ratios(d, 0.9933), tolerance, against="abc1234")


def test_judge_verdicts_and_reasons():
    regression = _judged(1.10, 0.02, 120)
    assert regression.verdict == "regression"
    assert regression.reason.startswith("regression: 1.")
    for part in ("x abc1234", "CI 1.", "at 99.33%", "p=", "120 pairs", "tolerance 5%"):
        assert part in regression.reason
    assert _judged(1 / 1.10, 0.02, 120).verdict == "improvement"
    assert _judged(1.00, 0.02, 120).verdict == "pass"
    unstable = _judged(1.00, 0.40, 120)
    assert unstable.verdict == "unstable"
    assert "pairs disagree" in unstable.reason and "pairs or a steadier benchmark" in unstable.reason
    # Beyond the tolerance but not proven, with an interval narrow enough to be usable.
    inconclusive = _judged(1.065, 0.08, 40)
    assert inconclusive.verdict == "inconclusive"
    assert inconclusive.reason.startswith("possible change beyond the 5% tolerance, not proven")
    for verdict in ("regression", "improvement", "pass", "unstable", "inconclusive"):
        assert Verdict(verdict).value == verdict


def test_judge_refuses_a_non_positive_tolerance():
    e = pairing.estimate([1.0] * 10, [1.1] * 10, 0.9)
    with pytest.raises(ValueError, match="tolerance"):
        pairing.judge(e, 0.0)


def test_pairs_needed_sets_where_unstable_starts():
    """With twice the pairs it asks for an A/A comparison is rarely unstable, with a quarter mostly."""
    spread, tolerance, confidence = 0.06, 0.02, 0.9933
    needed = pairing.pairs_needed(spread, tolerance, confidence)
    step = math.log(1.04 / 1.02)
    z = sps.norm.ppf(0.5 + confidence / 2)
    assert needed == math.ceil(math.pi / 3 * (z * spread / step) ** 2)

    def unstable_share(n: int) -> float:
        verdicts = [_judged(1.0, spread, n, tolerance, seed).verdict for seed in range(60)]
        return verdicts.count("unstable") / len(verdicts)

    assert unstable_share(2 * needed) <= 0.05
    assert unstable_share(max(needed // 4, 9)) >= 0.9
    assert pairing.pairs_needed(0.0, 0.05, 0.9933) == math.ceil(math.log2(2 / (1 - 0.9933)))


# -- simulation: false alarms and power on a drifting, heavy-tailed machine --------------------

def _simulated_pairs(rng: np.random.Generator, pairs: int, ratio: float, order_cost: float = 0.0,
                     seed: int = 0, episode: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Timings of ``pairs`` pairs on a machine like ours, the candidate ``ratio`` x slower.

    Per round: a two-state speed (fast phases ~30 rounds, slow ones ~2 rounds at 1.2-1.8x,
    as benchmarks/machine_noise.py measured for ~5 ms rounds), a random walk of the base
    speed (drift across the session), Student-t(2) noise and 3% interrupts of +20-100%.
    ``order_cost``: the second round of a pair is that much faster (a warm cache).
    ``episode``: one side, at random, runs 20-50% slower for a stretch of 15-35% of the
    pairs (what benchmarks/paired_prototype.py found on this machine under load).
    """
    rounds = 2 * pairs
    slow = np.zeros(rounds, dtype=bool)
    for i in range(1, rounds):
        slow[i] = rng.random() < (0.5 if slow[i - 1] else 1 / 30)
    speed = np.where(slow, rng.uniform(1.2, 1.8, rounds), 1.0)
    speed *= np.exp(np.cumsum(rng.normal(0, 0.01, rounds)))
    noise = np.exp(0.01 * rng.standard_t(2, rounds)) * np.where(rng.random(rounds) < 0.03,
                                                                 rng.uniform(1.2, 2.0, rounds), 1.0)
    times = 1e-3 * speed * noise
    times[1::2] *= 1 - order_cost
    reference, candidate = np.empty(pairs), np.empty(pairs)
    for pair, (first, _) in enumerate(pairing.PairSchedule(pairs, seed)):
        a, b = times[2 * pair], times[2 * pair + 1]
        reference[pair], candidate[pair] = (a, b * ratio) if first == "reference" else (b, a * ratio)
    if episode:
        length = int(pairs * rng.uniform(0.15, 0.35))
        start = int(rng.integers(0, pairs - length))
        slowed = reference if rng.random() < 0.5 else candidate
        slowed[start: start + length] *= rng.uniform(1.2, 1.5)
    return reference, candidate


def _simulated_verdicts(ratio: float, tolerance: float, sessions: int, order_cost: float = 0.0,
                        episode: bool = False) -> list[str]:
    """Verdicts of simulated comparisons; an A/A verdict gets "+excludes-1" when its interval
    misses 1.0, any gets "+widened" when the drift guard widened it."""
    rng = np.random.default_rng(int(ratio * 1000) + int(order_cost * 100) + episode)
    verdicts = []
    for session in range(sessions):
        reference, candidate = _simulated_pairs(rng, pairing.DEFAULT_PAIRS, ratio, order_cost, session, episode)
        estimate = pairing.estimate(reference, candidate, CONFIDENCE)
        verdict = pairing.judge(estimate, tolerance).verdict
        if ratio == 1.0 and not estimate.ci_low <= 1 <= estimate.ci_high:
            verdict += "+excludes-1"
        verdicts.append(verdict + ("+widened" if estimate.widened else ""))
    return verdicts


#: alpha 0.01 over three comparisons, as the prototype study's sessions.
CONFIDENCE = 1 - 2 * 0.01 / 3


@pytest.mark.parametrize("order_cost", [0.0, 0.05])
def test_simulated_unchanged_code_raises_no_false_alarm(order_cost):
    verdicts = _simulated_verdicts(1.0, 0.05, 300, order_cost)
    assert not any(v.startswith(("regression", "improvement")) for v in verdicts)
    # The interval's own level: it misses the true ratio in about 0.67% of sessions.
    assert sum("+excludes-1" in v for v in verdicts) <= 0.02 * len(verdicts)
    assert sum(v.startswith("unstable") for v in verdicts) <= 0.02 * len(verdicts)
    # Without drift the guard fires about as often as its level (1%), not routinely.
    assert sum(v.endswith("+widened") for v in verdicts) <= 0.03 * len(verdicts)


def test_simulated_slowdowns_are_found():
    ten_at_five = _simulated_verdicts(1.10, 0.05, 150)
    assert sum(v.startswith("regression") for v in ten_at_five) >= 0.95 * len(ten_at_five)
    five_at_two = _simulated_verdicts(1.05, 0.02, 150)
    assert sum(v.startswith("regression") for v in five_at_two) >= 0.90 * len(five_at_two)
    speedup = _simulated_verdicts(1 / 1.10, 0.05, 100)
    assert sum(v.startswith("improvement") for v in speedup) >= 0.95 * len(speedup)


def test_simulated_episodes_are_caught_by_the_drift_guard():
    """One side 20-50% slower for a stretch of every comparison: the guard keeps A/A from
    false verdicts that the signed-rank interval alone gives."""
    rng = np.random.default_rng(7)
    unguarded = 0
    for session in range(150):
        reference, candidate = _simulated_pairs(rng, pairing.DEFAULT_PAIRS, 1.0, seed=session, episode=True)
        d = np.sort(pairing.log_ratios(reference, candidate))
        low, high, _, _ = signedrank.signed_rank_interval(d, CONFIDENCE)
        unguarded += low > math.log(1.05) or high < -math.log(1.05)
    assert unguarded >= 5  # the hazard is real in this model ...
    verdicts = _simulated_verdicts(1.0, 0.05, 150, episode=True)
    assert not any(v.startswith(("regression", "improvement")) for v in verdicts)  # ... and handled
    assert sum(v.endswith("+widened") for v in verdicts) >= 0.5 * len(verdicts)


def test_drift_guard_widens_a_level_shift_and_says_so():
    rng = np.random.default_rng(11)
    d = rng.normal(0, 0.02, 300)
    d[:75] += math.log(1.30)  # the candidate 30% slower for the first quarter
    e = pairing.estimate_log_ratios(d, CONFIDENCE)
    assert e.widened and e.drift_p is not None and e.drift_p < 1e-6
    assert len(e.batch_ratios) == pairing.DRIFT_BATCHES
    assert max(e.batch_ratios) == pytest.approx(1.30, rel=0.03) and min(e.batch_ratios) == pytest.approx(1.0, abs=0.02)
    assert "widened to 8 batches' spread" in e.method
    j = pairing.judge(e, 0.05)
    assert j.verdict == "unstable" and "the ratio moved during the measurement" in j.reason
    assert "1.30" in j.reason or "1.29" in j.reason or "1.31" in j.reason
    # The same values in another order carry no drift: the guard reads the order measured.
    shuffled = pairing.estimate_log_ratios(rng.permutation(d), CONFIDENCE)
    assert not shuffled.widened and shuffled.drift_p is not None and shuffled.drift_p > 0.01
    assert (shuffled.ci_high / shuffled.ci_low) < (e.ci_high / e.ci_low)


def test_drift_guard_needs_enough_pairs():
    few = pairing.estimate_log_ratios(np.linspace(-0.1, 0.1, 39), 0.99)
    assert few.drift_p is None and not few.widened
    enough = pairing.estimate_log_ratios(np.linspace(-0.1, 0.1, 40), 0.99)  # sorted: a trend
    assert enough.drift_p is not None and enough.widened
