"""pytest_hostperf.pairing against published values, brute force and scipy.stats.

Reference values come from the literature (Hollander & Wolfe's depression data, R's and
scipy's documented outputs), from brute-force enumeration written here (all sign
vectors, all Walsh averages sorted) or from scipy.stats.wilcoxon called directly; never
from the function under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_hostperf import pairing
from pytest_hostperf.verdict import Verdict

#: Hollander & Wolfe (1999), Table 3.1: Hamilton depression scale factor IV of nine
#: patients at the first (x) and second (y) visit after a tranquilizer.
DEPRESSION_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
DEPRESSION_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
#: Darwin's Zea mays, cross- minus self-fertilised height in eighths of an inch (15 pairs).
DARWIN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def _walsh_sorted(values) -> list[float]:
    """All (x_i + x_j) / 2 for i <= j, sorted: the definition, by enumeration."""
    return sorted((a + b) / 2 for a, b in itertools.combinations_with_replacement(values, 2))


def _null_by_enumeration(n: int) -> np.ndarray:
    """P(T+ = t) by listing all 2^n sign vectors."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    for signs in itertools.product((0, 1), repeat=n):
        counts[sum(rank for rank, positive in zip(range(1, n + 1), signs) if positive)] += 1
    return counts / 2 ** n


# -- published examples ----------------------------------------------------------------------

def test_depression_data_hodges_lehmann_interval_and_p_value():
    d = np.subtract(DEPRESSION_X, DEPRESSION_Y)
    # R: wilcox.test(x, y, paired = TRUE, alternative = "greater") -> V = 40, p-value = 0.01953
    # (10 of the 512 sign vectors reach 40 or more); Hollander & Wolfe's estimate is 0.460.
    p_greater, p_less = pairing.signed_rank_pvalues(d)
    assert p_greater == pytest.approx(10 / 512, rel=1e-12)
    assert p_greater == pytest.approx(0.01953, abs=5e-6)
    assert p_less == pytest.approx(sps.wilcoxon(d, alternative="less").pvalue, rel=1e-12)
    assert pairing.hodges_lehmann(d) == pytest.approx(0.460, abs=1e-12)
    # 95%: P(T+ <= 5) = 10/512 <= 0.025 < P(T+ <= 6) = 14/512, so the interval runs from the
    # 6th smallest to the 6th largest of the 45 Walsh averages: 0.010 to 0.786, at 96.09%.
    low, high, achieved, exact = pairing.signed_rank_interval(np.sort(d), 0.95)
    walsh = _walsh_sorted(d)
    assert (low, high) == pytest.approx((walsh[5], walsh[-6]), abs=1e-12)
    assert (low, high) == pytest.approx((0.010, 0.786), abs=1e-12)
    assert achieved == pytest.approx(1 - 2 * 10 / 512, rel=1e-12)
    assert exact


def test_darwin_p_values_match_scipy_documentation():
    # scipy.stats.wilcoxon's documented example: two-sided 0.041259765625, greater 0.0206298828125.
    p_greater, p_less = pairing.signed_rank_pvalues(np.array(DARWIN, dtype=float))
    assert p_greater == pytest.approx(0.0206298828125, rel=1e-12)
    assert 2 * min(p_greater, p_less) == pytest.approx(0.041259765625, rel=1e-12)
    assert pairing.hodges_lehmann(DARWIN) == pytest.approx(np.median(_walsh_sorted(DARWIN)), abs=1e-12)


# -- the null distribution and the exact interval ----------------------------------------------

@pytest.mark.parametrize("n", range(1, 11))
def test_exact_null_distribution_matches_enumeration(n):
    np.testing.assert_allclose(pairing.signed_rank_null(n), _null_by_enumeration(n), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n,confidence", [(6, 0.90), (12, 0.95), (20, 0.99), (30, 0.9933), (120, 0.999)])
def test_exact_interval_is_the_inversion_of_the_exact_test(n, confidence):
    """Just outside each end the one-sided exact test rejects at the tail; just inside it does not."""
    d = np.sort(np.random.default_rng(n).standard_t(3, n) * 0.05 + 0.01)
    low, high, achieved, exact = pairing.signed_rank_interval(d, confidence)
    assert exact
    walsh = _walsh_sorted(d)
    tail = (1 - confidence) / 2
    k = walsh.index(low)
    assert walsh[-1 - k] == high  # symmetric ranks
    below, above = (walsh[k - 1] + walsh[k]) / 2, (walsh[k] + walsh[k + 1]) / 2
    assert sps.wilcoxon(d - below, alternative="greater", method="exact").pvalue <= tail
    assert sps.wilcoxon(d - above, alternative="greater", method="exact").pvalue > tail
    beyond, inside = (walsh[-1 - k] + walsh[-k]) / 2, (walsh[-2 - k] + walsh[-1 - k]) / 2
    assert sps.wilcoxon(d - beyond, alternative="less", method="exact").pvalue <= tail
    assert sps.wilcoxon(d - inside, alternative="less", method="exact").pvalue > tail
    assert achieved >= confidence


@pytest.mark.parametrize("n", [60, 200, 700])
def test_normal_interval_is_the_inversion_of_scipys_asymptotic_test(n):
    # Every fourth ratio repeats its neighbour: ties, so the normal approximation is used at
    # every n. (Not rounding to a grid: midpoints of grid values tie again in floating point.)
    d = np.random.default_rng(n).standard_t(2, n) * 0.03
    d[::4] = d[1::4]
    d = np.sort(d)
    confidence = 0.9933
    low, high, achieved, exact = pairing.signed_rank_interval(d, confidence)
    assert not exact
    walsh = np.unique(_walsh_sorted(d))  # distinct values: test between neighbours
    tail = (1 - confidence) / 2

    def p_value(mu: float, alternative: str) -> float:
        return sps.wilcoxon(d - mu, alternative=alternative, method="asymptotic", correction=True).pvalue

    at = int(np.searchsorted(walsh, low))
    assert walsh[at] == low
    assert p_value((walsh[at - 1] + low) / 2, "greater") <= tail < p_value((low + walsh[at + 1]) / 2, "greater")
    at = int(np.searchsorted(walsh, high))
    assert walsh[at] == high
    assert p_value((high + walsh[at + 1]) / 2, "less") <= tail < p_value((walsh[at - 1] + high) / 2, "less")
    assert achieved == pytest.approx(confidence, abs=0.002)


def test_normal_ranks_are_conservative_and_close_where_exact_is_used():
    """The continuity-corrected normal rank never exceeds the exact one (a wider interval), and
    its exact coverage stays within 0.2% of the request: at 50 pairs and at the switch."""
    for n in (50, pairing.EXACT_MAX_PAIRS):
        cdf = np.cumsum(pairing.signed_rank_null(n))
        mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
        for confidence in (0.9, 0.95, 0.99, 0.999, 0.9999):
            exact_k = int(np.searchsorted(cdf, (1 - confidence) / 2, side="right"))
            normal_k = math.floor(mean + 0.5 - sps.norm.ppf(0.5 + confidence / 2) * sd)
            assert normal_k <= exact_k
            assert confidence <= 1 - 2 * cdf[normal_k - 1] <= confidence + 0.002


# -- Walsh averages beyond the brute-force limit -----------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_selection_by_counting_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(np.round(rng.standard_t(2, 300) * 0.03, 4))  # rounded: ties included
    total = 300 * 301 // 2
    ranks = [1, 2, 3, 1000, total // 2, total // 2 + 1, total - 7, total]
    brute = pairing.walsh_order_statistics(x, ranks, walsh_limit=10_000)
    counted = pairing.walsh_order_statistics(x, ranks, walsh_limit=10)
    np.testing.assert_allclose(counted, brute, rtol=0, atol=1e-15)
    assert pairing.hodges_lehmann(x, walsh_limit=10) == pytest.approx(pairing.hodges_lehmann(x), abs=1e-15)


def test_large_comparison_uses_selection_and_agrees_with_scipy_p():
    d = np.random.default_rng(3).normal(0.02, 0.05, 2500)
    e = pairing.estimate_log_ratios(d, 0.999)
    assert e.pairs == 2500 and e.ci_low < e.ratio < e.ci_high
    assert math.log(e.ratio) == pytest.approx(0.02, abs=0.004)
    assert e.p_slower == pytest.approx(
        sps.wilcoxon(d, alternative="greater", method="asymptotic", correction=True).pvalue, rel=1e-6)


# -- p-values with ties and zeros --------------------------------------------------------------

@pytest.mark.parametrize("n", [12, 80])
def test_p_values_with_ties_and_zeros_match_scipy(n):
    d = np.round(np.random.default_rng(n).normal(0.01, 0.03, n), 2)  # a coarse clock: ties
    d[::5] = 0.0  # and identical timings
    assert len(set(np.abs(d[d != 0]))) < np.sum(d != 0)
    greater, less = pairing.signed_rank_pvalues(d)
    for ours, alternative in ((greater, "greater"), (less, "less")):
        theirs = sps.wilcoxon(d, alternative=alternative, zero_method="wilcox", correction=True,
                              method="asymptotic").pvalue
        assert ours == pytest.approx(theirs, rel=1e-9)


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
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Timings of ``pairs`` pairs on a machine like ours, the candidate ``ratio`` x slower.

    Per round: a two-state speed (fast phases ~30 rounds, slow ones ~2 rounds at 1.2-1.8x,
    as benchmarks/machine_noise.py measured for ~5 ms rounds), a random walk of the base
    speed (drift across the session), Student-t(2) noise and 3% interrupts of +20-100%.
    ``order_cost``: the second round of a pair is that much faster (a warm cache).
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
    return reference, candidate


def _simulated_verdicts(ratio: float, tolerance: float, sessions: int, order_cost: float = 0.0) -> list[str]:
    rng = np.random.default_rng(int(ratio * 1000) + int(order_cost * 100))
    verdicts = []
    for session in range(sessions):
        reference, candidate = _simulated_pairs(rng, pairing.DEFAULT_PAIRS, ratio, order_cost, seed=session)
        estimate = pairing.estimate(reference, candidate, 1 - 2 * 0.01 / 3)
        verdicts.append(pairing.judge(estimate, tolerance).verdict)
        if ratio == 1.0:
            verdicts[-1] += "" if estimate.ci_low <= 1 <= estimate.ci_high else "+excludes-1"
    return verdicts


@pytest.mark.parametrize("order_cost", [0.0, 0.05])
def test_simulated_unchanged_code_raises_no_false_alarm(order_cost):
    verdicts = _simulated_verdicts(1.0, 0.05, 400, order_cost)
    assert not any(v.startswith(("regression", "improvement")) for v in verdicts)
    # The interval's own level: it misses the true ratio in about 0.67% of sessions.
    assert sum(v.endswith("+excludes-1") for v in verdicts) <= 0.02 * len(verdicts)
    assert sum(v.startswith("unstable") for v in verdicts) <= 0.02 * len(verdicts)


def test_simulated_slowdowns_are_found():
    ten_at_five = _simulated_verdicts(1.10, 0.05, 200)
    assert ten_at_five.count("regression") >= 0.95 * len(ten_at_five)
    five_at_two = _simulated_verdicts(1.05, 0.02, 200)
    assert five_at_two.count("regression") >= 0.90 * len(five_at_two)
    speedup = _simulated_verdicts(1 / 1.10, 0.05, 100)
    assert speedup.count("improvement") >= 0.95 * len(speedup)
