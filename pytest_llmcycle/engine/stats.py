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


def summarize(samples: Sequence[float], *, presorted: bool = False) -> Summary:
    """Quartiles as ``np.percentile(x, [25, 50, 75])`` gives them (same interpolation, same
    values), from one sort and three lookups: percentile's own machinery costs ~0.1 ms."""
    x = np.asarray(samples, dtype=float) if presorted else sorted_array(samples)
    if x.size == 0:
        raise ValueError("cannot summarize an empty sample")
    return Summary(quantile_of_sorted(x, 0.5), quantile_of_sorted(x, 0.25), quantile_of_sorted(x, 0.75), int(x.size))


def thin(samples: Sequence[float], k: int, *, presorted: bool = False) -> list[float]:
    """At most ``k`` real samples, evenly spread over the sorted sample.

    Keeping order statistics (not interpolated quantiles) preserves the distribution's
    shape for later rank tests while bounding what a baseline file stores.
    """
    x = np.asarray(samples, dtype=float) if presorted else sorted_array(samples)
    if x.size <= k:
        return x.tolist()
    return x[_thin_index(x.size, k)].tolist()


@functools.lru_cache(maxsize=64)
def _thin_index(n: int, k: int) -> np.ndarray:
    idx = np.round(np.linspace(0, n - 1, k)).astype(int)
    idx.flags.writeable = False  # shared between calls
    return idx


def sorted_array(samples: Sequence[float]) -> np.ndarray:
    """The sample as a sorted float array: verdicts sort once and hand it to the functions below."""
    return np.sort(np.asarray(samples, dtype=float))


def median_of_sorted(x: np.ndarray) -> float:
    n = x.size
    return float(x[(n - 1) // 2] + x[n // 2]) / 2.0


def median_ci_halfwidth(samples: Sequence[float], confidence: float = 0.95, *, presorted: bool = False) -> float:
    """Relative half-width of the distribution-free confidence interval of the median.

    Uses the binomial order-statistic interval (normal approximation), so it costs one
    sort (none with ``presorted=True``); the timer calls it between rounds to stop once the
    median is pinned down.
    """
    x = np.asarray(samples, dtype=float) if presorted else sorted_array(samples)
    n = x.size
    if n < 3:
        return math.inf
    z = _z(confidence)
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    med = median_of_sorted(x)
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


def mann_whitney_greater(x: Sequence[float], y: Sequence[float], *, presorted: bool = False) -> float:
    """One-sided Mann-Whitney U p-value for "x tends to be larger than y".

    Normal approximation with tie and continuity corrections (as scipy's
    ``mannwhitneyu(..., alternative="greater", method="asymptotic")``); timing samples are
    large enough (>= 5 each) for it to be accurate. U counts, for each x, the ys below it
    (ties count half): two binary searches into the sorted y instead of ranking both.
    """
    xa = np.asarray(x, dtype=float) if presorted else sorted_array(x)
    ya = np.asarray(y, dtype=float) if presorted else sorted_array(y)
    nx, ny = xa.size, ya.size
    if nx == 0 or ny == 0:
        return 1.0
    below = np.searchsorted(ya, xa, side="left")
    upto = np.searchsorted(ya, xa, side="right")
    u = float(below.sum()) + 0.5 * float((upto - below).sum())
    n = nx + ny
    mean = nx * ny / 2.0
    tie_term = 0.0
    both = np.concatenate([xa, ya])
    both.sort(kind="mergesort")  # two sorted runs: one merge
    new_value = both[1:] != both[:-1]
    if not new_value.all():  # some values repeat (stored samples are rounded): correct the variance
        starts = np.flatnonzero(new_value) + 1
        ties = np.diff(np.concatenate(([0], starts, [n]))).astype(float)
        tie_term = float((ties**3 - ties).sum()) / (n * (n - 1))
    var = nx * ny / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return 0.5
    z = (u - mean - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def bootstrap_medians(samples: Sequence[float], rng: np.random.Generator, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    """Medians of ``n_boot`` resamples (with replacement) of ``samples``, drawn exactly.

    A resample's median is the sorted sample at the resample's median *index*, and that index
    has a known law: resampled indices are ``floor(n * U)`` for iid uniforms ``U``, so the
    j-th smallest is ``floor(n * U_(j))`` with ``U_(j) ~ Beta(j, n - j + 1)``. For an even
    ``n`` the lower middle one is ``U_(k+1)`` times the largest of ``k`` more uniforms. This
    draws the same distribution as resampling and sorting ``n_boot x n`` indices (the test
    suite checks it against that) in ``O(n_boot)`` instead, so a 200-sample stage costs
    ~0.1 ms rather than ~2 ms.
    """
    x = sorted_array(samples)
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    return _medians_at(x, _median_indices(x.size, rng, n_boot))


def _median_indices(n: int, rng: np.random.Generator, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) middle indices of ``n_boot`` resamples of ``n`` sorted values; equal for odd ``n``.

    They depend on ``n`` and the random stream only, not on the values.
    """
    if n == 1:
        zero = np.zeros(n_boot, dtype=np.intp)
        return zero, zero
    k = n // 2  # 0-based index of the (upper) middle order statistic
    u_hi = rng.beta(k + 1, n - k, size=n_boot)
    hi = np.minimum((u_hi * n).astype(np.intp), n - 1)
    if n % 2:
        return hi, hi
    u_lo = u_hi * rng.random(n_boot) ** (1.0 / k)
    lo = np.minimum((u_lo * n).astype(np.intp), n - 1)
    return lo, hi


def _medians_at(x: np.ndarray, idx: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    lo, hi = idx
    if lo is hi:
        return x[hi]
    return 0.5 * (x[lo] + x[hi])


@functools.lru_cache(maxsize=64)
def _index_plan(seed: int, sizes: tuple, n_boot: int) -> tuple:
    """The resample indices :func:`ratio_ci` draws for groups of these sizes from this seed.

    A verdict's bootstrap is seeded (the same samples give the same verdict), so its random
    draws depend only on the seed and the group sizes; most stages of a suite share a few
    sizes, so the draws are made once and reused, bit for bit what drawing them again gives.
    """
    rng = np.random.default_rng(seed)
    plan = tuple(_median_indices(n, rng, n_boot) for n in sizes)
    for lo, hi in plan:
        lo.flags.writeable = hi.flags.writeable = False
    return plan


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
    w = list(weights) if weights is not None else [1.0] * len(baseline)
    bs = [sorted_array(b) for b in baseline]
    cs = [sorted_array(c) for c in current]
    if any(x.size == 0 for x in bs + cs):
        raise ValueError("cannot bootstrap an empty sample")
    point_b = sum(wi * median_of_sorted(b) for wi, b in zip(w, bs))
    point_c = sum(wi * median_of_sorted(c) for wi, c in zip(w, cs))
    # the draws a fresh default_rng(seed) makes for these sizes, in this order (cached)
    plan = _index_plan(seed, tuple(x.size for x in bs + cs), N_BOOTSTRAP)
    boot_b = sum(wi * _medians_at(b, idx) for wi, b, idx in zip(w, bs, plan[: len(bs)]))
    boot_c = sum(wi * _medians_at(c, idx) for wi, c, idx in zip(w, cs, plan[len(bs):]))
    ratios = np.sort(boot_c / boot_b)
    alpha = 1.0 - confidence
    n = ratios.size
    at_most_one = int(np.searchsorted(ratios, 1.0, side="right"))
    at_least_one = n - int(np.searchsorted(ratios, 1.0, side="left"))
    floor = 1.0 / n
    return RatioEstimate(
        point_c / point_b,
        quantile_of_sorted(ratios, alpha / 2),
        quantile_of_sorted(ratios, 1 - alpha / 2),
        max(floor, at_most_one / n),
        max(floor, at_least_one / n),
    )


def quantile_of_sorted(x: np.ndarray, q: float) -> float:
    """``np.quantile(x, q)`` (linear interpolation) of an already sorted array, without its overhead."""
    pos = q * (x.size - 1)
    i = min(int(math.floor(pos)), x.size - 1)
    j = min(i + 1, x.size - 1)
    a, b = float(x[i]), float(x[j])
    t = pos - i
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)  # numpy's own lerp, same rounding
