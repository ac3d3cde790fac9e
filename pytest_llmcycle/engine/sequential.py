"""When more samples can no longer change a stage's verdict: the sequential stop rule. Pure.

The timer (:func:`pytest_llmcycle.measure.timing.run_rounds`) looks at the samples taken so
far on a geometric schedule and asks :func:`settled` whether the verdict is decided. The
baseline is fixed, so the final ratio is ``median(current) / median(baseline)`` and only the
current median is still unknown; its distribution-free interval (order statistics) bounds
where more samples could move it:

* **inside**: the whole interval of the ratio lies inside ``[1/(1+t), 1+t]``: the point
  estimate will stay inside the band, and :func:`~pytest_llmcycle.engine.verdict.judge` calls
  any ratio there "ok" (gating only widens the band). Stop at once.
* **outside**: the whole interval lies beyond the widest band a verdict can use (the
  recording processes' gates, :func:`~pytest_llmcycle.engine.verdict.ok_band`), and the
  current sample's own 95 % half-width is at most half the threshold (so stopping early does
  not gate the stage at its own noise). A change is rare and worth its time: this stop is
  taken only once ``OUTSIDE_MIN_SPENT`` of the budget is spent, so a short burst of a busy
  neighbour cannot decide it alone (and the confirming re-measure stays).

Optional stopping: each look ``k`` (1, 2, ...) uses the two-sided level
``1 - alpha * 6 / (pi^2 k^2)``; these error rates sum to ``alpha`` over any number of looks,
so "the interval lies inside (outside) the band while the true ratio does not" happens with
probability at most ``alpha`` over the whole sequential run (union bound; samples i.i.d.).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from . import stats

#: total error rate of all looks together (see the module docstring)
SEQ_ALPHA = 0.01
#: an "outside" stop waits until this share of the budget is spent
OUTSIDE_MIN_SPENT = 0.5
INSIDE, OUTSIDE = "inside", "outside"

#: ``stop_when(samples, spent)``: samples taken so far (any order, one unit), ``spent`` the
#: share of the budget used; True stops the rounds
StopFn = Callable[[Sequence[float], float], bool]


def look_z(look: int, alpha: float = SEQ_ALPHA) -> float:
    """z of look ``look`` (1-based): two-sided level ``1 - alpha * 6 / (pi^2 look^2)``."""
    if look < 1:
        raise ValueError(f"look counts from 1, got {look}")
    return stats._z(1.0 - alpha * 6.0 / (math.pi**2 * look * look))


def median_interval(x: np.ndarray, z: float) -> tuple[float, float]:
    """Distribution-free interval of the median of sorted ``x``: order statistics at ranks
    ``n/2 -+ z sqrt(n)/2`` (the binomial interval of :func:`stats.median_ci_halfwidth`)."""
    n = x.size
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    return float(x[lo]), float(x[hi])


def settled(
    baseline_median: float,
    current: Sequence[float],
    threshold: float,
    look: int,
    *,
    outer: tuple[float, float] | None = None,
    spent: float = 1.0,
    alpha: float = SEQ_ALPHA,
) -> str:
    """INSIDE or OUTSIDE when more samples cannot change the verdict, else "".

    ``baseline_median`` and ``current`` share a unit; ``outer`` is the widest "ok" band of
    ratios (default: the threshold's); ``spent`` the share of the budget used so far.
    """
    x = stats.sorted_array(current)
    if x.size < 3 or not baseline_median > 0:
        return ""
    lo, hi = median_interval(x, look_z(look, alpha))
    r_lo, r_hi = lo / baseline_median, hi / baseline_median
    if 1.0 / (1.0 + threshold) < r_lo and r_hi < 1.0 + threshold:
        return INSIDE
    band_lo, band_hi = outer if outer is not None else (1.0 / (1.0 + threshold), 1.0 + threshold)
    if spent >= OUTSIDE_MIN_SPENT and (r_lo > band_hi or r_hi < band_lo):
        if stats.median_ci_halfwidth(x, presorted=True) <= threshold / 2:
            return OUTSIDE
    return ""


def stop_rule(
    baseline_samples: Sequence[float],
    threshold: float,
    *,
    outer: tuple[float, float] | None = None,
    scale: float = 1.0,
    alpha: float = SEQ_ALPHA,
) -> StopFn:
    """A ``stop_when`` for the timer: each call is one more look at the samples.

    ``scale`` converts the timer's samples to the baseline's unit (1e-6: ns to ms).
    """
    base = stats.median_of_sorted(stats.sorted_array(baseline_samples))
    looks = [0]

    def stop_when(samples: Sequence[float], spent: float) -> bool:
        looks[0] += 1
        cur = np.asarray(samples, dtype=float) * scale
        return bool(settled(base, cur, threshold, looks[0], outer=outer, spent=spent, alpha=alpha))

    return stop_when


#: with no baseline to settle against (or when recording), rounds stop once the median's 95 %
#: half-width is within this share of the threshold, or ``precision`` when that is wider: the
#: 0.5 % default alone was never reached by a ms-scale stage on a shared CPU, and a baseline
#: known to an eighth of the threshold adds little to a later verdict's noise
RECORD_SHARE = 1 / 8


def precision_rule(precision: float) -> StopFn:
    """A ``stop_when`` that stops once the median's 95 % half-width is within ``precision`` of it."""

    def stop_when(samples: Sequence[float], spent: float) -> bool:
        return stats.median_ci_halfwidth(samples) <= precision

    return stop_when


def from_evidence(
    baseline, threshold: float, unit: str = "call", scale: float = 1e-6, precision: float | None = None,
) -> StopFn | None:
    """The stop rule of a stage judged against ``baseline`` (a verdict ``Evidence``, samples in ms).

    With nothing to settle against (no baseline, another unit, no samples) it is the precision
    stop at ``max(precision, RECORD_SHARE * threshold)`` when ``precision`` is given, else None
    (the timer then stops on its own ``policy.precision``).
    """
    if baseline is None or baseline.unit != unit or not len(baseline.samples_ms) or baseline.parts:
        return None if precision is None else precision_rule(max(precision, RECORD_SHARE * threshold))
    from .verdict import ok_band

    return stop_rule(baseline.samples_ms, threshold, outer=ok_band(threshold, baseline.process_range), scale=scale)
