"""A/B in one process: two callables timed interleaved, their speedup with a bootstrap interval.

No stored baseline is needed, so "the optimized path is at least 1.3x faster" holds on any
machine: both paths see the same machine at the same moment (rounds alternate A B, B A, ...).

    speedup = median(T_A) / median(T_B)        (> 1: B is faster)

Its 95 % interval is the bootstrap interval of that ratio of medians
(:func:`pytest_llmcycle.engine.stats.ratio_ci`, each side resampled independently, seeded).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..engine import stats
from ..measure.timing import Clock, TimingPolicy, make_round, run_rounds


class SpeedupError(AssertionError):
    """The asserted speedup does not hold; the message shows medians, speedup and interval."""


@dataclass(frozen=True)
class Speedup:
    ratio: float  # median(A) / median(B)
    lo: float
    hi: float
    p_value: float  # bootstrap share of resamples where B is not faster than A


def speedup(a_samples: Sequence[float], b_samples: Sequence[float], seed: int = 0) -> Speedup:
    """median(a) / median(b) with its bootstrap 95 % interval (pure; any time unit)."""
    # ratio_ci(baseline, current) estimates current / baseline: here A / B
    est = stats.ratio_ci([list(b_samples)], [list(a_samples)], seed=seed)
    return Speedup(est.ratio, est.lo, est.hi, est.p_slower)


@dataclass(frozen=True)
class ABResult:
    name_a: str
    name_b: str
    samples_a_ms: tuple
    samples_b_ms: tuple
    cold_a_ms: float | None = None
    cold_b_ms: float | None = None
    counters_a: dict = field(default_factory=dict)
    counters_b: dict = field(default_factory=dict)
    #: False in smoke mode (--llmcycle-disable): each path ran once, so nothing is asserted on the speedup
    timed: bool = True

    @property
    def median_a_ms(self) -> float:
        return stats.summarize(self.samples_a_ms).median

    @property
    def median_b_ms(self) -> float:
        return stats.summarize(self.samples_b_ms).median

    @functools.cached_property
    def estimate(self) -> Speedup:
        # seeded, so the same for every access: computed once (speedup, ci and describe() share it)
        return speedup(self.samples_a_ms, self.samples_b_ms)

    @property
    def speedup(self) -> float:
        """How many times faster B is than A: median(A) / median(B)."""
        return self.estimate.ratio

    @property
    def ci(self) -> tuple:
        e = self.estimate
        return (e.lo, e.hi)

    def describe(self) -> str:
        e = self.estimate
        lines = [
            f"  {self.name_a:<12} median {self.median_a_ms:.4g} ms (n={len(self.samples_a_ms)})",
            f"  {self.name_b:<12} median {self.median_b_ms:.4g} ms (n={len(self.samples_b_ms)})",
            f"  speedup      {e.ratio:.3f}x (95% CI {e.lo:.3f}x .. {e.hi:.3f}x) = median({self.name_a}) / median({self.name_b})",
        ]
        if self.counters_a and self.counters_b:
            from ..engine.counts import fmt_count

            for k in sorted(set(self.counters_a) & set(self.counters_b)):
                lines.append(f"  {k:<12} {fmt_count(k, self.counters_a[k])} vs {fmt_count(k, self.counters_b[k])}")
        return "\n".join(lines)

    def assert_faster(self, at_least: float = 1.0, *, strict: bool = False) -> Speedup:
        """Fail unless B is at least ``at_least`` times faster than A.

        By default the claim fails only when it surely does not hold (the whole 95 % interval
        is below ``at_least``); ``strict=True`` demands that it surely holds (the whole
        interval at or above it).
        """
        if not self.timed:  # one cold call a side is no evidence either way
            r = self.samples_a_ms[0] / self.samples_b_ms[0]
            return Speedup(r, r, r, math.nan)
        e = self.estimate
        bad = e.lo < at_least if strict else e.hi < at_least
        if bad:
            how = "not surely" if strict and e.hi >= at_least else "not"
            raise SpeedupError(
                f"llmcycle: {self.name_b} is {how} {at_least:g}x faster than {self.name_a}\n{self.describe()}"
            )
        return e

    def assert_not_slower(self, tolerance: float = 0.05) -> Speedup:
        """Fail when B is surely more than ``tolerance`` slower than A."""
        return self.assert_faster(1.0 / (1.0 + tolerance))


def run_ab(
    a: Callable[[], Any],
    b: Callable[[], Any],
    device: str,
    policy: TimingPolicy,
    clock: Clock = time.perf_counter_ns,
) -> tuple[list[float], list[float], float, float]:
    """Time ``a`` and ``b`` in alternating order; returns (a samples, b samples, cold a, cold b) in ns.

    Each is called once cold, once to size its batch (calls under 100 us are batched), then
    rounds alternate A-B and B-A until the budget is spent or the speedup's median is precise.
    """
    from ..measure.device import synchronizer

    sync = synchronizer(device)

    def once(fn: Callable[[], Any]) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return float(clock() - t0)

    cold_a, cold_b = once(a), once(b)
    if policy.once:  # smoke mode: each path ran once; nothing to compare
        return [max(cold_a, 1.0)], [max(cold_b, 1.0)], cold_a, cold_b
    numbers = []
    for fn in (a, b):
        one = max(once(fn), 1.0)
        numbers.append(1 if one >= policy.min_sample_s * 1e9 else int(min(10_000, math.ceil(policy.min_sample_s * 1e9 / one))))
    ra, rb = make_round(a, device, clock, numbers[0]), make_round(b, device, clock, numbers[1])
    sa: list[float] = []
    sb: list[float] = []

    def round_fn() -> list[float]:
        # alternate the order so neither path always runs on a cache the other just warmed
        if len(sa) % 2 == 0:
            x = ra()[0]
            y = rb()[0]
        else:
            y = rb()[0]
            x = ra()[0]
        sa.append(x)
        sb.append(y)
        return [x / max(y, 1e-9)]

    m = run_rounds(round_fn, policy, clock, unit="ratio")
    return sa[len(sa) - m.rounds :], sb[len(sb) - m.rounds :], cold_a, cold_b
