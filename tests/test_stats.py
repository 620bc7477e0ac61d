"""pytest_hostperf.stats against reference values computed independently here.

Reference values come from hand formulas, hard-coded quantiles or scipy.stats called
directly, never from the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_hostperf.stats import (
    Distribution,
    SessionSummary,
    between_session_sd,
    compare_to_history,
    ratio_of_medians,
    summarize,
)

#: Hard-coded reference quantiles (tables / independently computed).
T_0995_DF2 = 9.924843
T_0975_DF4 = 2.776445
Z_0975 = 1.959964
#: sqrt(pi/2) and the IQR of a standard normal (2 * Phi^-1(0.75)), by hand.
SQRT_PI_2 = math.sqrt(math.pi / 2)
NORMAL_IQR = 2 * 0.6744897501960817


def _t2_sf(t: float) -> float:
    """Closed-form survival function of Student's t with 2 degrees of freedom."""
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


# -- summarize -------------------------------------------------------------------------------

def test_summarize_median_and_log_median_se_on_fixed_array():
    # log x = 0, 1, 2, 3, 4: median e^2, quartiles of log x exactly 1 and 3 (IQR 2).
    samples = [math.exp(v) for v in (3, 0, 4, 1, 2)]  # deliberately unsorted
    s = summarize(samples)
    assert s.median_s == pytest.approx(math.exp(2), rel=1e-12)
    expected_se = 1.2533 * 2 / 1.349 / math.sqrt(5)
    assert s.log_median_se == pytest.approx(expected_se, rel=1e-3)
    assert s.log_median_se == pytest.approx(SQRT_PI_2 * 2 / NORMAL_IQR / math.sqrt(5), rel=1e-9)
    assert s.rounds == 5


def test_summarize_even_count_median_and_scipy_iqr():
    samples = [1.0e-3, 1.2e-3, 0.9e-3, 1.1e-3, 1.5e-3, 1.05e-3]
    s = summarize(samples)
    # Even count: median is the mean of the two middle values (1.05 ms and 1.1 ms).
    assert s.median_s == pytest.approx((1.05e-3 + 1.1e-3) / 2, rel=1e-12)
    iqr = sps.iqr(np.log(samples))
    assert s.log_median_se == pytest.approx(1.2533141373 * iqr / 1.3489795 / math.sqrt(6), rel=1e-6)
    assert s.rounds == 6


def test_summarize_constant_samples_have_zero_se():
    s = summarize([2.5] * 7)
    assert s.median_s == 2.5
    assert s.log_median_se == 0.0


@pytest.mark.parametrize("bad", [
    [],
    [1.0, -1.0, 2.0],
    [1.0, 0.0, 2.0],
    [1.0, float("nan"), 2.0],
    [1.0, float("inf")],
])
def test_summarize_rejects_empty_nonpositive_and_nonfinite(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_between_session_sd():
    history = [SessionSummary(math.exp(v), 0.0, 10) for v in (0.0, 0.02, -0.02)]
    assert between_session_sd(history) == pytest.approx(0.02, rel=1e-9)
    assert between_session_sd(history[:1]) is None
    assert between_session_sd([]) is None


# -- compare_to_history ----------------------------------------------------------------------

def _history(logs, se=0.001, rounds=50):
    return [SessionSummary(math.exp(v), se, rounds) for v in logs]


def test_compare_to_history_three_sessions_t_df2():
    history = _history([0.0, 0.02, -0.02])
    current = SessionSummary(math.exp(0.05), 0.001, 50)
    r = compare_to_history(current, history, confidence=0.99, session_noise=0.03)

    diff = 0.05                                  # mean of history logs is 0
    sd = 0.02                                    # sqrt((0.02^2 + 0.02^2) / 2)
    se = sd * math.sqrt(1 + 1 / 3)               # prediction SE; the floor (0.001) is inactive
    half = T_0995_DF2 * se
    assert r.ratio == pytest.approx(math.exp(diff), rel=1e-9)
    assert r.ci_low == pytest.approx(math.exp(diff - half), rel=1e-5)
    assert r.ci_high == pytest.approx(math.exp(diff + half), rel=1e-5)
    assert r.confidence == 0.99
    assert r.p_slower == pytest.approx(_t2_sf(diff / se), rel=1e-6)
    assert r.p_faster == pytest.approx(1 - _t2_sf(diff / se), rel=1e-6)
    assert r.p_slower + r.p_faster == pytest.approx(1.0)
    assert "3 baseline sessions" in r.method


def test_compare_to_history_within_session_floor():
    # Within-session SE 0.05 everywhere: floor = sqrt(0.05^2 + 0.05^2)/sqrt(2) = 0.05 > sd 0.02.
    history = _history([0.0, 0.02, -0.02], se=0.05)
    current = SessionSummary(math.exp(0.05), 0.05, 50)
    r = compare_to_history(current, history, confidence=0.99, session_noise=0.03)
    se = 0.05 * math.sqrt(1 + 1 / 3)
    assert r.ci_high == pytest.approx(math.exp(0.05 + T_0995_DF2 * se), rel=1e-5)
    assert r.ci_low == pytest.approx(math.exp(0.05 - T_0995_DF2 * se), rel=1e-5)
    assert r.p_slower == pytest.approx(_t2_sf(0.05 / se), rel=1e-6)


def test_compare_to_history_identical_sessions_never_zero_width():
    history = _history([0.0, 0.0, 0.0], se=0.01)
    current = SessionSummary(1.0, 0.01, 50)
    r = compare_to_history(current, history, confidence=0.99, session_noise=0.03)
    se = 0.01 * math.sqrt(1 + 1 / 3)
    assert r.ratio == pytest.approx(1.0)
    assert r.ci_high == pytest.approx(math.exp(T_0995_DF2 * se), rel=1e-5)
    assert r.ci_high > 1.01


def test_compare_to_history_five_sessions_t_df4():
    logs = [0.01, -0.01, 0.03, -0.02, -0.01]
    history = _history(logs)
    current = SessionSummary(math.exp(0.04), 0.001, 50)
    r = compare_to_history(current, history, confidence=0.95, session_noise=0.03)
    mean = sum(logs) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / 4)
    se = sd * math.sqrt(1 + 1 / 5)
    diff = 0.04 - mean
    assert r.ratio == pytest.approx(math.exp(diff), rel=1e-9)
    assert r.ci_low == pytest.approx(math.exp(diff - T_0975_DF4 * se), rel=1e-5)
    assert r.ci_high == pytest.approx(math.exp(diff + T_0975_DF4 * se), rel=1e-5)
    assert r.p_slower == pytest.approx(float(sps.t.sf(diff / se, df=4)), rel=1e-9)


def test_compare_to_history_single_session_uses_normal_and_session_noise():
    history = [SessionSummary(1.0, 0.01, 50)]
    current = SessionSummary(math.exp(0.05), 0.02, 50)
    r = compare_to_history(current, history, confidence=0.95, session_noise=0.03)
    se = 0.03 * math.sqrt(1 + 1 / 1)  # the prediction SE of one new session against one saved
    assert r.ratio == pytest.approx(math.exp(0.05), rel=1e-9)
    assert r.ci_low == pytest.approx(math.exp(0.05 - Z_0975 * se), rel=1e-5)
    assert r.ci_high == pytest.approx(math.exp(0.05 + Z_0975 * se), rel=1e-5)
    assert r.p_slower == pytest.approx(float(sps.norm.sf(0.05 / se)), rel=1e-9)
    assert "1 baseline session" in r.method and "3.0%" in r.method and "--hostperf-session-noise" in r.method


def test_a_short_history_assumes_the_largest_noise_it_has_evidence_for():
    one = [SessionSummary(1.0, 0.01, 50)]
    two = _history([0.0, 0.4])  # two sessions 49% apart: SD of log medians 0.283
    current = SessionSummary(1.0, 0.01, 50)
    prior = compare_to_history(current, one, 0.95, session_noise=0.25)
    assert prior.ci_high == pytest.approx(math.exp(Z_0975 * 0.25 * math.sqrt(2)), rel=1e-5)
    by_host = compare_to_history(current, one, 0.95, session_noise=0.25, host_noise=0.4)
    assert by_host.ci_high == pytest.approx(math.exp(Z_0975 * 0.4 * math.sqrt(2)), rel=1e-5)
    assert "host reference" in by_host.method
    by_sessions = compare_to_history(SessionSummary(math.exp(0.2), 0.01, 50), two, 0.95, session_noise=0.25)
    half = Z_0975 * 0.4 / math.sqrt(2) * math.sqrt(1.5)
    assert by_sessions.ci_high == pytest.approx(math.exp(0.0 + half), rel=1e-5)
    assert "2 baseline sessions" in by_sessions.method and "saved sessions' spread" in by_sessions.method
    # three sessions: their own spread and Student's t, the prior no longer counts
    three = _history([0.0, 0.01, -0.01])
    assert compare_to_history(current, three, 0.95, 0.25).method == "prediction t-test over 3 baseline sessions"


def test_compare_to_history_session_noise_only_matters_for_one_session():
    one = [SessionSummary(1.0, 0.01, 50)]
    current = SessionSummary(1.02, 0.01, 50)
    narrow = compare_to_history(current, one, 0.99, session_noise=0.01)
    wide = compare_to_history(current, one, 0.99, session_noise=0.10)
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low
    three = _history([0.0, 0.01, -0.01])
    a = compare_to_history(current, three, 0.99, session_noise=0.01)
    b = compare_to_history(current, three, 0.99, session_noise=0.10)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_compare_to_history_empty_history():
    with pytest.raises(ValueError):
        compare_to_history(SessionSummary(1.0, 0.01, 5), [], 0.99, 0.03)


def test_prediction_interval_false_alarm_calibration():
    """5 baseline sessions and the current one from the same distribution: the current
    session lies above the 98% prediction interval's upper bound in ~1% of cases.

    On the ratio scale the interval is centred on the observed ratio, so "current above
    the baseline's upper prediction bound" is "the ratio's lower bound is above 1"."""
    rng = np.random.default_rng(20261127)
    n_sim, k, between, within = 2000, 5, 0.03, 0.004
    logs = rng.normal(0.0, between, size=(n_sim, k + 1))
    above = 0
    for row in logs:
        history = [SessionSummary(math.exp(v), within, 100) for v in row[:k]]
        current = SessionSummary(math.exp(row[k]), within, 100)
        r = compare_to_history(current, history, confidence=0.98, session_noise=0.03)
        assert r.ci_low < r.ratio < r.ci_high
        above += r.ci_low > 1.0
    rate = above / n_sim
    # Nominal 1%; a normal quantile instead of t(4) would give ~4%, no sqrt(1+1/K) ~1.5%+.
    assert rate < 0.025
    assert rate > 0.003  # and not absurdly conservative either


# -- ratio_of_medians ------------------------------------------------------------------------

def _lognormal(rng, median, sigma, n):
    return median * np.exp(rng.normal(0.0, sigma, n))


def test_ratio_of_medians_known_ratio():
    rng = np.random.default_rng(1)
    slow = _lognormal(rng, 1.10e-3, 0.05, 1500)
    fast = _lognormal(rng, 1.00e-3, 0.05, 1500)
    r = ratio_of_medians(slow, fast, confidence=0.99)
    assert r.ratio == pytest.approx(1.10, rel=0.01)
    assert r.ratio == pytest.approx(np.median(slow) / np.median(fast), rel=1e-9)
    assert r.ci_low < 1.10 < r.ci_high
    assert r.ci_low < r.ratio < r.ci_high
    assert r.ci_low > 1.05  # the interval is informative, not just wide
    assert r.p_slower < 0.01
    assert r.p_faster > 0.99
    assert r.confidence == 0.99


def test_ratio_of_medians_null_case():
    rng = np.random.default_rng(2)
    a = _lognormal(rng, 1e-3, 0.05, 1000)
    b = _lognormal(rng, 1e-3, 0.05, 1000)
    r = ratio_of_medians(a, b, confidence=0.99)
    assert r.ci_low < 1.0 < r.ci_high
    assert r.ratio == pytest.approx(1.0, abs=0.02)
    assert r.p_slower > 0.005 and r.p_faster > 0.005


def test_ratio_of_medians_faster_side():
    rng = np.random.default_rng(3)
    r = ratio_of_medians(_lognormal(rng, 0.8, 0.05, 800), _lognormal(rng, 1.0, 0.05, 800), 0.95)
    assert r.ratio == pytest.approx(0.8, rel=0.01)
    assert r.ci_high < 1.0
    assert r.p_faster < 0.01 and r.p_slower > 0.99


def test_ratio_of_medians_deterministic_with_seed():
    rng = np.random.default_rng(4)
    a = _lognormal(rng, 1.1, 0.1, 300)
    b = _lognormal(rng, 1.0, 0.1, 300)
    r1 = ratio_of_medians(a, b, 0.95, n_resamples=500, seed=7)
    r2 = ratio_of_medians(a, b, 0.95, n_resamples=500, seed=7)
    r3 = ratio_of_medians(a, b, 0.95, n_resamples=500, seed=8)
    assert r1 == r2
    assert (r3.ci_low, r3.ci_high) != (r1.ci_low, r1.ci_high)
    assert r3.ratio == r1.ratio  # the point estimate does not depend on the seed


def test_ratio_of_medians_thins_huge_inputs():
    rng = np.random.default_rng(5)
    a = _lognormal(rng, 1.10, 0.05, 200_000)
    b = _lognormal(rng, 1.00, 0.05, 150_000)
    full = float(np.median(a) / np.median(b))
    r = ratio_of_medians(a, b, confidence=0.99, n_resamples=1000, max_points=2000)
    assert r.ratio == pytest.approx(full, rel=0.005)
    assert r.ci_low < full < r.ci_high
    # The CI width is the one of ~2000 points, not 200000: around 4 * 1.25*0.05/sqrt(2000) * ~1.4.
    width = math.log(r.ci_high / r.ci_low)
    assert 0.004 < width < 0.02


def test_ratio_of_medians_needs_samples():
    with pytest.raises(ValueError):
        ratio_of_medians([], [1.0, 2.0], 0.95)
    with pytest.raises(ValueError):
        ratio_of_medians([1.0], [], 0.95)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [[1.0, -1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 3.0], [1.0, float("nan"), 2.0]])
def test_ratio_of_medians_rejects_nonpositive_and_nonfinite(bad):
    with pytest.raises(ValueError):
        ratio_of_medians(bad, [1.0, 2.0, 3.0], 0.95)


@pytest.mark.parametrize("df, q, quantile", [
    (1, 0.995, 63.656741162871),   # printed t tables
    (9, 0.975, 2.262157162740),
    (30, 0.95, 1.697260886504),
    (None, 0.975, 1.959963984540),
    (None, 0.995, 2.575829303549),
])
def test_distribution_quantiles_match_printed_tables(df, q, quantile):
    dist = Distribution(df)
    assert dist.ppf(q) == pytest.approx(quantile, rel=1e-9)
    assert dist.cdf(quantile) == pytest.approx(q, rel=1e-9)
    assert dist.sf(quantile) == pytest.approx(1 - q, rel=1e-7)


@pytest.mark.parametrize("df", [1, 3, 9, 49, None])
def test_distribution_agrees_with_scipy_stats(df):
    reference = sps.t(df) if df is not None else sps.norm()
    dist = Distribution(df)
    for x in (-6.0, -1.5, 0.0, 0.3, 2.5, 8.0):
        assert dist.cdf(x) == pytest.approx(reference.cdf(x), rel=1e-12, abs=1e-300)
        assert dist.sf(x) == pytest.approx(reference.sf(x), rel=1e-12, abs=1e-300)
    for q in (1e-6, 0.01, 0.5, 0.9, 0.99833):
        assert dist.ppf(q) == pytest.approx(reference.ppf(q), rel=1e-9)


def test_distribution_refuses_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom"):
        Distribution(0)
