"""Robust estimators and significance tests on timing samples.

Pure numpy: nothing here reads a clock, a file or a pytest object, so every function is
tested with synthetic samples. Samples are plain sequences of positive floats (any unit).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Resamples used by the bootstrap; 2,000 keeps the 95 % bounds stable to ~0.1 %.
N_BOOTSTRAP = 2000
#: Larger samples are thinned (order statistics kept) before resampling, to bound memory.
MAX_BOOTSTRAP_N = 1000


@dataclass(frozen=True)
class Summary:
    """Robust description of one sample: median, interquartile range and count."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR relative to the median: the stage's own spread, unit-free."""
        return self.iqr / self.median if self.median > 0 else math.inf


def summarize(samples: Sequence[float]) -> Summary:
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("cannot summarize an empty sample")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return Summary(float(med), float(q1), float(q3), int(x.size))


def thin(samples: Sequence[float], k: int) -> list[float]:
    """At most ``k`` real samples, evenly spread over the sorted sample.

    Keeping order statistics (not interpolated quantiles) preserves the distribution's
    shape for later rank tests while bounding what a baseline file stores.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    if x.size <= k:
        return x.tolist()
    idx = np.round(np.linspace(0, x.size - 1, k)).astype(int)
    return x[idx].tolist()


def median_ci_halfwidth(samples: Sequence[float], confidence: float = 0.95) -> float:
    """Relative half-width of the distribution-free confidence interval of the median.

    Uses the binomial order-statistic interval (normal approximation), so it costs one
    sort; the timer calls it between rounds to stop once the median is pinned down.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n < 3:
        return math.inf
    z = _z(confidence)
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    med = float(x[(n - 1) // 2] + x[n // 2]) / 2.0  # x is sorted: no second partition
    if med <= 0:
        return math.inf
    return float(x[hi] - x[lo]) / 2.0 / med


@functools.lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    # Inverse normal CDF for the two-sided interval; bisection on erf keeps us scipy-free.
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _rankdata(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the sizes of tied groups."""
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size, dtype=np.intp)
    s = a[sorter]
    obs = np.r_[True, s[1:] != s[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], obs.size]
    ranks = 0.5 * (count[dense] + count[dense - 1] + 1)
    return ranks, np.diff(count)


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "x tends to be larger than y".

    Normal approximation with tie and continuity corrections (as scipy's
    ``mannwhitneyu(..., alternative="greater", method="asymptotic")``); timing samples are
    large enough (>= 5 each) for it to be accurate.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    nx, ny = xa.size, ya.size
    if nx == 0 or ny == 0:
        return 1.0
    ranks, ties = _rankdata(np.concatenate([xa, ya]))
    u = float(ranks[:nx].sum()) - nx * (nx + 1) / 2.0
    n = nx + ny
    mean = nx * ny / 2.0
    tie_term = float((ties**3 - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = nx * ny / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return 0.5
    z = (u - mean - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def bootstrap_medians(samples: Sequence[float], rng: np.random.Generator, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    """Medians of ``n_boot`` resamples (with replacement) of ``samples``.

    ``thin`` returns the sample sorted, so a resample's median is the value at its median
    *index*: sorting small integer indices is ~5x cheaper than a float median of the values,
    and gives exactly ``np.median(x[idx], axis=1)`` for the same draws.
    """
    x = np.asarray(thin(samples, MAX_BOOTSTRAP_N), dtype=float)
    n = x.size
    idx = rng.integers(0, n, size=(n_boot, n))
    idx.sort(axis=1)
    k = n // 2
    if n % 2:
        return x[idx[:, k]]
    return 0.5 * (x[idx[:, k - 1]] + x[idx[:, k]])


@dataclass(frozen=True)
class RatioEstimate:
    """current/baseline with its bootstrap interval and one-sided bootstrap p-values."""

    ratio: float
    lo: float
    hi: float
    p_slower: float  # share of resampled ratios <= 1: evidence against "current is slower"
    p_faster: float  # share of resampled ratios >= 1

    @property
    def rel_halfwidth(self) -> float:
        return (self.hi - self.lo) / 2 / self.ratio


def ratio_ci(
    baseline: Sequence[Sequence[float]],
    current: Sequence[Sequence[float]],
    confidence: float = 0.95,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> RatioEstimate:
    """Point estimate and bootstrap interval of sum(w*median(current)) / sum(w*median(baseline)).

    One group per stage: with one group this is the ratio of medians; with several it is the
    ratio of cycle totals (each stage resampled independently). The seed is fixed so the same
    samples always give the same verdict.
    """
    rng = np.random.default_rng(seed)
    w = list(weights) if weights is not None else [1.0] * len(baseline)
    point_b = sum(wi * float(np.median(b)) for wi, b in zip(w, baseline))
    point_c = sum(wi * float(np.median(c)) for wi, c in zip(w, current))
    boot_b = sum(wi * bootstrap_medians(b, rng) for wi, b in zip(w, baseline))
    boot_c = sum(wi * bootstrap_medians(c, rng) for wi, c in zip(w, current))
    ratios = boot_c / boot_b
    alpha = 1.0 - confidence
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    floor = 1.0 / ratios.size
    return RatioEstimate(
        point_c / point_b,
        float(lo),
        float(hi),
        max(floor, float(np.mean(ratios <= 1.0))),
        max(floor, float(np.mean(ratios >= 1.0))),
    )
