"""A/B in one process: two callables timed in paired, interleaved rounds; their speedup with an interval.

No stored baseline is needed, so "the optimized path is at least 1.3x faster" holds on any
machine: both paths see the same machine at the same moment. Rounds come in *blocks* of two,
A B + B A or B A + A B by a (seeded) coin toss; round ``i`` gives the pair ``(a_i, b_i)`` and
the ratio ``q_i = a_i / b_i``, and block ``j`` (rounds 2j and 2j+1) the ratio
``e_j = sqrt(q_2j * q_2j+1)``. Each path runs first once a block, so what running first or
second does to a call (a warm cache, a frequency step) cancels; what the machine does on a
longer time scale (a busy neighbour, a per-process speed mode, drift) hits both sides of a
block alike; and the coin keeps anything periodic from lining up with one path.

    speedup = median over blocks of e_j        (> 1: B is faster)

Its 95 % interval is the distribution-free (sign test) interval of that median: order
statistics of the ``e_j`` chosen by the exact binomial law, valid for any block distribution
symmetric about its median, and conservative (at least 95 %). For A/A it holds whatever the
machine does: the coin makes each block's ``e_j`` as likely above 1 as below. (Pooled medians
with independent bootstraps ignored the pairing and under-covered A/A: issue 14.)

``assert_faster(x)`` passes only when the interval's lower end is at least ``x``: the
evidence supports "B is at least x times faster".
"""
from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from ..engine import stats
from ..measure.timing import Clock, TimingPolicy, make_round, run_rounds

#: the interval's stated coverage
CONFIDENCE = 0.95
#: fewest blocks (two rounds each) taken: the smallest count whose 95 % sign-test interval leaves
#: out the lowest and the highest block (9: [x_(1), x_(7)], 96.1 %). With 6 the interval is the
#: whole range, so one block disturbed by a busy neighbour decided an ``assert_faster`` on its own
#: (seen in CI beside another xdist worker: a 2x speedup whose interval's lower end read 1.12x)
MIN_BLOCKS = 9


class SpeedupError(AssertionError):
    """The asserted speedup does not hold; the message shows medians, speedup and interval."""


@dataclass(frozen=True)
class Speedup:
    ratio: float  # median over blocks of the paired ratio a / b
    lo: float
    hi: float
    p_value: float  # sign test: chance of this many blocks with B faster if B were not faster
    blocks: int = 0
    coverage: float = CONFIDENCE  # the interval's exact coverage (at least CONFIDENCE from 6 blocks on)


def block_ratios(a_samples: Sequence[float], b_samples: Sequence[float]) -> list[float]:
    """``sqrt(q_2j * q_2j+1)`` of consecutive paired rounds (``q_i = a_i / b_i``), in round order.

    Samples are in round order, ``a_i`` and ``b_i`` from the same round; an odd last round is left out.
    """
    n = min(len(a_samples), len(b_samples))
    q = [float(a_samples[i]) / max(float(b_samples[i]), 1e-300) for i in range(n)]
    return [math.sqrt(q[2 * j] * q[2 * j + 1]) for j in range(n // 2)]


@functools.lru_cache(maxsize=256)
def sign_interval_rank(n: int, confidence: float = CONFIDENCE) -> tuple[int, float]:
    """(k, coverage): ``[x_(k), x_(n-1-k)]`` (0-based, sorted) is the widest-k interval of the median
    whose exact coverage ``1 - 2 P(Bin(n, 1/2) <= k)`` is at least ``confidence``; k = 0 (the
    range) when ``n`` is too small for it, with the coverage it has."""
    best = (0, 1.0 - 2.0 * 0.5**n)  # the range: x_(0) .. x_(n-1)
    cdf = 0.0
    for k in range((n + 1) // 2):
        cdf += math.comb(n, k) * 0.5**n  # P(Bin(n, 1/2) <= k): the median lies below x_(k)
        cover = 1.0 - 2.0 * cdf
        if cover < confidence:
            break
        best = (k, cover)
    return best


def _binom_upper(n: int, c: int) -> float:
    """P(Bin(n, 1/2) >= c)."""
    return float(sum(math.comb(n, i) for i in range(c, n + 1))) * 0.5**n


def speedup(a_samples: Sequence[float], b_samples: Sequence[float], seed: int = 0) -> Speedup:
    """The paired speedup of B over A with its sign-test interval (pure; any time unit).

    ``a_samples[i]`` and ``b_samples[i]`` must come from the same round, rounds in the order
    taken (A first in even rounds). With fewer than two pairs it falls back to the ratio of
    medians with no interval (lo = hi = ratio). ``seed`` is kept for callers; nothing is random.
    """
    e = sorted(block_ratios(a_samples, b_samples))
    n = len(e)
    if n == 0:
        r = stats.summarize(a_samples).median / stats.summarize(b_samples).median
        return Speedup(r, r, r, math.nan, 0, 0.0)
    k, cover = sign_interval_rank(n)
    mid = stats.median_of_sorted(stats.sorted_array(e))
    faster = sum(1 for x in e if x > 1.0)
    return Speedup(mid, e[k], e[n - 1 - k], _binom_upper(n, faster) if faster else 1.0, n, cover)


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
            f"  speedup      {e.ratio:.3f}x ({_ci_label(e)} {e.lo:.3f}x .. {e.hi:.3f}x) = median over {e.blocks} blocks "
            f"of paired rounds of {self.name_a} / {self.name_b}",
        ]
        if self.counters_a and self.counters_b:
            from ..engine.counts import fmt_count

            for k in sorted(set(self.counters_a) & set(self.counters_b)):
                lines.append(f"  {k:<12} {fmt_count(k, self.counters_a[k])} vs {fmt_count(k, self.counters_b[k])}")
        return "\n".join(lines)

    def assert_faster(self, at_least: float = 1.0, *, strict: bool = True) -> Speedup:
        """Pass only when the evidence supports "B is at least ``at_least`` times faster than A":
        the lower end of the speedup's 95 % interval is at least ``at_least``.

        ``strict=False`` is the weaker check: fail only when the evidence refutes the claim (the
        whole interval below ``at_least``); a claim inside the interval then passes unproven.
        """
        if not self.timed:  # one cold call a side is no evidence either way
            r = self.samples_a_ms[0] / self.samples_b_ms[0]
            return Speedup(r, r, r, math.nan)
        e = self.estimate
        if strict and e.lo < at_least:
            raise SpeedupError(
                f"llmcycle: {self.name_b} is not shown to be {at_least:g}x faster than {self.name_a}: the lower end of "
                f"the speedup's interval is {e.lo:.3f}x (assert_faster(x) passes only when it is at least x)\n"
                f"{self.describe()}"
            )
        if not strict and e.hi < at_least:
            raise SpeedupError(
                f"llmcycle: {self.name_b} is not {at_least:g}x faster than {self.name_a}: the whole interval of the "
                f"speedup is below it (upper end {e.hi:.3f}x; strict=False fails only then)\n{self.describe()}"
            )
        return e

    def assert_not_slower(self, tolerance: float = 0.05, *, strict: bool = True) -> Speedup:
        """Pass only when the evidence supports "B is at most ``tolerance`` slower than A": the
        interval's lower end is at least ``1 / (1 + tolerance)`` (``strict=False``: fail only when
        B is surely more than ``tolerance`` slower)."""
        return self.assert_faster(1.0 / (1.0 + tolerance), strict=strict)


def _ci_label(e: Speedup) -> str:
    return "95% CI" if e.coverage >= CONFIDENCE else f"{e.coverage:.0%} CI, too few blocks for 95%"


def run_ab(
    a: Callable[[], Any],
    b: Callable[[], Any],
    device: str,
    policy: TimingPolicy,
    clock: Clock = time.perf_counter_ns,
    seed: int | None = 0,
) -> tuple[list[float], list[float], float, float]:
    """Time ``a`` and ``b`` in paired rounds; returns (a samples, b samples, cold a, cold b) in ns,
    in round order from a block's first round (see the module docstring).

    Each is called once cold, once to size its batch (calls under 100 us are batched; both
    alike when their sizes are within 4x, so A/A compares like with like), then blocks of two
    rounds (A B + B A or B A + A B, by a coin seeded with ``seed``; None: fresh randomness, the
    coin only has to be independent of the machine) run until the budget is spent or the
    ratio's median is precise; at least ``2 * MIN_BLOCKS`` rounds, so the interval reaches 95 % without its two extreme blocks.
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
    if max(numbers) <= 4 * min(numbers):
        numbers = [max(numbers)] * 2
    ra, rb = make_round(a, device, clock, numbers[0]), make_round(b, device, clock, numbers[1])
    least = max(policy.min_rounds, 2 * MIN_BLOCKS)
    policy = replace(policy, min_rounds=least, max_rounds=max(policy.max_rounds, least))
    sa: list[float] = []
    sb: list[float] = []

    coin = random.Random(seed)
    a_first: list[bool] = []

    def round_fn() -> list[float]:
        # blocks of two rounds, A B + B A or B A + A B by a coin: each path runs first once a block,
        # and nothing periodic on the machine can line up with one of them
        if len(sa) % 2 == 0:
            a_first.append(coin.random() < 0.5)
        if a_first[-1] == (len(sa) % 2 == 0):
            x = ra()[0]
            y = rb()[0]
        else:
            y = rb()[0]
            x = ra()[0]
        sa.append(x)
        sb.append(y)
        return [x / max(y, 1e-9)]

    m = run_rounds(round_fn, policy, clock, unit="ratio")
    start = len(sa) - m.rounds
    start += start % 2  # from a block's first round (warm-up rounds may end mid-block)
    return sa[start:], sb[start:], cold_a, cold_b
