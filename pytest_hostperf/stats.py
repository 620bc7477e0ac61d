"""Statistics for performance comparisons. Pure: numpy/scipy only, no pytest.

Two questions are asked of the data, with different noise models:

* **Against the baseline** (is this session slower than the saved sessions?). Timings of
  one session are not independent of the session: the machine, its clock, its neighbours
  and the page cache shift every round of a session together. So the unit of analysis
  is the *session*: each saved session contributes the log of its median, and the new
  session's log median is compared with them through a prediction interval
  (Student's t with K-1 degrees of freedom, K = saved sessions). Within-session noise is
  already inside the between-session spread of medians; it sets a floor so that K
  identical-looking sessions never yield a zero-width interval. With fewer than
  :data:`SHORT_HISTORY` saved sessions the between-session noise cannot be estimated; a
  conservative prior (``session_noise``, 25% by default: this machine's sessions differ
  by 15-28%) is assumed, raised to whatever the sessions themselves or the host's
  reference workload showed, and the verdict says how little such a history proves.

* **Against native** (virtualization overhead). Both environments are measured in the
  same session, in interleaved blocks, so slow drift hits both alike; the ratio of medians
  gets a bootstrap confidence interval from the pooled samples of each side.

All intervals are on the ratio scale (``new/old``); 1.10 means 10% slower.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pytest_hostperf.model import RatioEstimate, SessionSummary

# The distributions come from scipy.special (Student's t and normal CDFs and their
# inverses, the routines scipy.stats itself calls): ~0.25 s to import where scipy.stats
# costs ~0.85 s, on a machine whose second core is busy starting the agent. Imported
# where used, so the controller can load it in the background
# (HostperfSession.preload_statistics).

#: Saved sessions needed before their own spread is trusted as the between-session noise.
SHORT_HISTORY = 3
#: IQR of a standard normal; turns an IQR into a robust standard-deviation estimate.
_IQR_TO_SD = 1.3489795003921634
#: Asymptotic efficiency factor of the median vs the mean for normal data (sqrt(pi/2)).
_MEDIAN_SE_FACTOR = 1.2533141373155001


def summarize(samples: Sequence[float]) -> SessionSummary:
    """Median and the standard error of its log, robustly, from one session's rounds."""
    data = _timings(samples)
    median = float(np.median(data))
    q1, q3 = np.percentile(np.log(data), [25, 75])
    # Rounds are autocorrelated and heavy-tailed; the IQR-based SE of the median on the
    # log scale is robust to the outliers that dominate timing data.
    se = _MEDIAN_SE_FACTOR * (q3 - q1) / _IQR_TO_SD / math.sqrt(data.size)
    return SessionSummary(median, float(se), int(data.size))


def between_session_sd(history: Sequence[SessionSummary]) -> float | None:
    """Sample standard deviation of log medians across sessions (None for fewer than 2)."""
    if len(history) < 2:
        return None
    return float(np.std(np.log([h.median_s for h in history]), ddof=1))


def compare_to_history(
    current: SessionSummary,
    history: Sequence[SessionSummary],
    confidence: float,
    session_noise: float,
    host_noise: float | None = None,
) -> RatioEstimate:
    """Ratio of the current median to the baseline's typical median, with a prediction CI.

    ``confidence`` is two-sided (0.99 -> 0.5% in each tail). With at least
    :data:`SHORT_HISTORY` saved sessions the between-session noise is their own spread
    (Student's t, K-1 degrees of freedom). With fewer it is assumed: the largest of
    ``session_noise`` (the prior, a standard deviation of log medians), the saved
    sessions' own spread and ``host_noise`` (the spread of the host's reference workload
    over the sessions, this one included); the normal quantile is used, as for a known SD.
    """
    if not history:
        raise ValueError("history is empty")
    k = len(history)
    logs = np.log([h.median_s for h in history])
    diff = math.log(current.median_s) - float(np.mean(logs))
    within = math.sqrt(current.log_median_se ** 2 + float(np.mean([h.log_median_se ** 2 for h in history])))
    if k >= SHORT_HISTORY:
        spread = max(float(np.std(logs, ddof=1)), within / math.sqrt(2))
        dist = Distribution(df=k - 1)
        method = f"prediction t-test over {k} baseline sessions"
    else:
        sources = {"--hostperf-session-noise": session_noise, "the saved sessions' spread":
                   float(np.std(logs, ddof=1)) if k > 1 else 0.0, "the host reference's spread": host_noise or 0.0,
                   "the within-session spread": within / math.sqrt(2)}
        source = max(sources, key=lambda name: sources[name])
        spread = sources[source]
        dist = Distribution()
        method = (f"{k} baseline session{'s' if k > 1 else ''}, between-session noise assumed {spread:.1%} "
                  f"(from {source})")
    se = max(spread * math.sqrt(1.0 + 1.0 / k), 1e-12)
    z = diff / se
    half = float(dist.ppf(0.5 + confidence / 2)) * se
    return RatioEstimate(
        ratio=math.exp(diff),
        ci_low=math.exp(diff - half),
        ci_high=math.exp(diff + half),
        confidence=confidence,
        p_slower=float(dist.sf(z)),
        p_faster=float(dist.cdf(z)),
        method=method,
    )


class Distribution:
    """Student's t with ``df`` degrees of freedom, or the standard normal (``df=None``)."""

    def __init__(self, df: int | None = None) -> None:
        if df is not None and df < 1:
            raise ValueError(f"degrees of freedom must be >= 1, got {df}")
        self.df = df

    def cdf(self, x: float) -> float:
        from scipy import special

        return float(special.ndtr(x) if self.df is None else special.stdtr(self.df, x))

    def sf(self, x: float) -> float:
        return self.cdf(-x)  # both are symmetric about 0; avoids 1 - cdf's cancellation

    def ppf(self, q: float) -> float:
        from scipy import special

        return float(special.ndtri(q) if self.df is None else special.stdtrit(self.df, q))


def ratio_of_medians(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence: float,
    n_resamples: int = 2000,
    seed: int = 0,
    max_points: int = 2000,
) -> RatioEstimate:
    """Bootstrap CI of median(numerator)/median(denominator), same-session samples.

    Large sample sets are thinned to ``max_points`` evenly spaced rounds first: the CI
    barely changes and the cost stays bounded. The p-values come from the bootstrap
    distribution of the log ratio (percentile method).
    """
    rng = np.random.default_rng(seed)
    a = np.log(_thin(_timings(numerator), max_points))
    b = np.log(_thin(_timings(denominator), max_points))
    estimate = float(np.median(a) - np.median(b))
    boot_a = np.median(rng.choice(a, size=(n_resamples, a.size), replace=True), axis=1)
    boot_b = np.median(rng.choice(b, size=(n_resamples, b.size), replace=True), axis=1)
    boot = boot_a - boot_b
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    # Share of resamples on the other side of 1, with the +1 correction of a Monte Carlo p.
    p_slower = float((np.sum(boot <= 0) + 1) / (n_resamples + 1))
    p_faster = float((np.sum(boot >= 0) + 1) / (n_resamples + 1))
    return RatioEstimate(math.exp(estimate), math.exp(float(low)), math.exp(float(high)),
                         confidence, p_slower, p_faster, f"bootstrap of medians ({n_resamples} resamples)")


def _timings(samples: Sequence[float]) -> np.ndarray:
    """Samples as an array, refusing what no timing can be (empty, zero, negative, NaN)."""
    data = np.asarray(samples, dtype=float)
    if data.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(data)) or np.any(data <= 0):
        raise ValueError("timings must be positive finite numbers")
    return data


def _thin(data: np.ndarray, max_points: int) -> np.ndarray:
    if data.size <= max_points:
        return data
    index = np.linspace(0, data.size - 1, max_points).round().astype(int)
    thinned: np.ndarray = data[index]
    return thinned


__all__ = ["SHORT_HISTORY", "SessionSummary", "RatioEstimate", "summarize", "between_session_sd", "compare_to_history",
           "Distribution", "ratio_of_medians"]
