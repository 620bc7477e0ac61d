"""pytest_hostperf.signedrank against published values, brute force and scipy.stats.

Reference values come from the literature (Hollander & Wolfe's depression data, R's and
scipy's documented outputs), from brute-force enumeration written here (all sign
vectors, all Walsh averages sorted) or from scipy.stats called directly; never from the
function under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_hostperf import signedrank

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
    p_greater, p_less = signedrank.signed_rank_pvalues(d)
    assert p_greater == pytest.approx(10 / 512, rel=1e-12)
    assert p_greater == pytest.approx(0.01953, abs=5e-6)
    assert p_less == pytest.approx(sps.wilcoxon(d, alternative="less").pvalue, rel=1e-12)
    assert signedrank.hodges_lehmann(d) == pytest.approx(0.460, abs=1e-12)
    # 95%: P(T+ <= 5) = 10/512 <= 0.025 < P(T+ <= 6) = 14/512, so the interval runs from the
    # 6th smallest to the 6th largest of the 45 Walsh averages: 0.010 to 0.786, at 96.09%.
    low, high, achieved, exact = signedrank.signed_rank_interval(np.sort(d), 0.95)
    walsh = _walsh_sorted(d)
    assert (low, high) == pytest.approx((walsh[5], walsh[-6]), abs=1e-12)
    assert (low, high) == pytest.approx((0.010, 0.786), abs=1e-12)
    assert achieved == pytest.approx(1 - 2 * 10 / 512, rel=1e-12)
    assert exact


def test_darwin_p_values_match_scipy_documentation():
    # scipy.stats.wilcoxon's documented example: two-sided 0.041259765625, greater 0.0206298828125.
    p_greater, p_less = signedrank.signed_rank_pvalues(np.array(DARWIN, dtype=float))
    assert p_greater == pytest.approx(0.0206298828125, rel=1e-12)
    assert 2 * min(p_greater, p_less) == pytest.approx(0.041259765625, rel=1e-12)
    assert signedrank.hodges_lehmann(DARWIN) == pytest.approx(np.median(_walsh_sorted(DARWIN)), abs=1e-12)


# -- the null distribution and the exact interval ----------------------------------------------

@pytest.mark.parametrize("n", range(1, 11))
def test_exact_null_distribution_matches_enumeration(n):
    np.testing.assert_allclose(signedrank.signed_rank_null(n), _null_by_enumeration(n), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n,confidence", [(6, 0.90), (12, 0.95), (20, 0.99), (30, 0.9933), (120, 0.999)])
def test_exact_interval_is_the_inversion_of_the_exact_test(n, confidence):
    """Just outside each end the one-sided exact test rejects at the tail; just inside it does not."""
    d = np.sort(np.random.default_rng(n).standard_t(3, n) * 0.05 + 0.01)
    low, high, achieved, exact = signedrank.signed_rank_interval(d, confidence)
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
    low, high, achieved, exact = signedrank.signed_rank_interval(d, confidence)
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
    for n in (50, signedrank.EXACT_MAX_PAIRS):
        cdf = np.cumsum(signedrank.signed_rank_null(n))
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
    brute = signedrank.walsh_order_statistics(x, ranks, walsh_limit=10_000)
    counted = signedrank.walsh_order_statistics(x, ranks, walsh_limit=10)
    np.testing.assert_allclose(counted, brute, rtol=0, atol=1e-15)
    assert signedrank.hodges_lehmann(x, walsh_limit=10) == pytest.approx(signedrank.hodges_lehmann(x), abs=1e-15)


# -- p-values with ties and zeros --------------------------------------------------------------

@pytest.mark.parametrize("n", [12, 80])
def test_p_values_with_ties_and_zeros_match_scipy(n):
    d = np.round(np.random.default_rng(n).normal(0.01, 0.03, n), 2)  # a coarse clock: ties
    d[::5] = 0.0  # and identical timings
    assert len(set(np.abs(d[d != 0]))) < np.sum(d != 0)
    greater, less = signedrank.signed_rank_pvalues(d)
    for ours, alternative in ((greater, "greater"), (less, "less")):
        theirs = sps.wilcoxon(d, alternative=alternative, zero_method="wilcox", correction=True,
                              method="asymptotic").pvalue
        assert ours == pytest.approx(theirs, rel=1e-9)


# -- Kruskal-Wallis (the drift guard's test) ----------------------------------------------------

@pytest.mark.parametrize("seed,shift", [(0, 0.0), (1, 0.3), (2, 1.0)])
def test_kruskal_wallis_matches_scipy_with_and_without_ties(seed, shift):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(shift * (i == 2), 1, 40) for i in range(8)]
    assert signedrank.kruskal_wallis(batches) == pytest.approx(sps.kruskal(*batches).pvalue, rel=1e-9)
    tied = [np.round(b, 1) for b in batches]
    assert signedrank.kruskal_wallis(tied) == pytest.approx(sps.kruskal(*tied).pvalue, rel=1e-9)


def test_kruskal_wallis_of_identical_values_finds_nothing():
    assert signedrank.kruskal_wallis([np.zeros(5), np.zeros(5)]) == 1.0


