"""Base against head on one machine: paired rounds -> the ratio head/base and its 95 % interval.

In ``--llmcycle-against`` mode each stage is timed by K process pairs (a base process and a
head process each) that take turns round by round, in ABBA order. The k-th round of a pair's
head is matched with the k-th round of its base (they ran next to each other), and each match
gives one log ratio ``log(head / base)``. Drift and a busy neighbour hit both sides of a match
alike, so they cancel.

What does not cancel is a process's own speed mode (memory layout, core placement: fresh
processes of the same code differ by a few per cent). Each pair sees one draw of it, so the
interval is built at the level of pairs: the estimate is the mean over pairs of each pair's
median log ratio, and its variance adds the pairs' own sampling error to the between-pair
spread beyond it, never less than :data:`PROCESS_FLOOR` per pair (a modest prior: the spread of
one or two pairs is no estimate of it). Pure: numbers in, numbers out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: standard deviation of one pair's log ratio due to per-process speed modes, assumed at least
#: this large (measured on this project's 2-core CI-like machine: see bench/results/against.md)
PROCESS_FLOOR = 0.01
#: fewest matched rounds a pair needs to count
MIN_MATCHED = 3
#: below this share of a CPU (mean over the base's timed rounds: a few rounds that lost half
#: their time count) neighbours took the time that wall time measures, and the rounds are
#: compared by their CPU time (:func:`cpu_basis`). Quiet, the rounds here have 0.99 and more.
BUSY_SHARE = 0.97

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class PairedEstimate:
    """Head/base ratio from paired rounds: point, 95 % interval and one-sided p-values."""

    ratio: float
    lo: float
    hi: float
    p_slower: float
    p_faster: float
    #: each pair's own ratio (median of its matched rounds), in pair order
    per_pair: tuple
    #: matched rounds in all
    n: int
    #: log-scale standard error of log(ratio)
    se: float

    @property
    def rel_halfwidth(self) -> float:
        """Half the interval's width on the log scale, as a fraction (what the noise gate reads)."""
        return math.exp(_Z95 * self.se) - 1.0


def match_rounds(base: Sequence[float], head: Sequence[float]) -> list[float]:
    """log(head_k / base_k) for the k-th rounds of one pair (both in turn order), as many as both have."""
    return [math.log(h / b) for b, h in zip(base, head) if b > 0 and h > 0]


def cpu_basis(base_shares: Sequence[float]) -> str:
    """How to compare the rounds: "" (wall time) or the note that says they were compared by CPU time.

    Each share is a timed round's CPU time over its wall time (per timing thread). Where the
    base's rounds had their CPU, wall time is the measure. Where neighbours took much of
    it, wall time is stretched at random, round by round, and the paired ratios scatter (+-20 %
    under a busy loop per core, measured); CPU time is what the code itself spent, so it judges
    there. The wall-time verdict is still taken: a head slower by wall time only (it waits: a
    sleep, a lock, I/O, or its rounds were unlucky) is inconclusive, never ok
    (``verdict._decide_paired``).
    """
    if not base_shares:
        return ""
    b = sum(base_shares) / len(base_shares)
    if b >= BUSY_SHARE:
        return ""
    return f"compared by CPU time: other processes held the CPU for {1 - b:.0%} of the base's timed rounds"


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _median_se(xs: Sequence[float]) -> float:
    """Standard error of a median from the median absolute deviation (robust to a busy spike)."""
    n = len(xs)
    m = _median(xs)
    mad = _median([abs(x - m) for x in xs]) * 1.4826
    if mad == 0.0:  # ties (a fake clock): fall back on the plain standard deviation
        mean = sum(xs) / n
        mad = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, n - 1))
    return 1.2533 * mad / math.sqrt(n)


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def estimate(pairs: Sequence[Sequence[float]], floor: float = PROCESS_FLOOR) -> PairedEstimate | None:
    """The head/base ratio from each pair's matched log ratios; None when no pair has enough."""
    used = [list(p) for p in pairs if len(p) >= MIN_MATCHED]
    if not used:
        return None
    k = len(used)
    centers = [_median(p) for p in used]
    ses = [_median_se(p) for p in used]
    m = sum(centers) / k
    within = sum(s * s for s in ses) / (k * k)
    spread = 0.0
    if k >= 2:
        var_b = sum((c - m) ** 2 for c in centers) / (k - 1)
        spread = max(0.0, var_b - sum(s * s for s in ses) / k)
    tau2 = max(spread, floor * floor)
    se = math.sqrt(within + tau2 / k)
    return PairedEstimate(
        ratio=math.exp(m), lo=math.exp(m - _Z95 * se), hi=math.exp(m + _Z95 * se),
        p_slower=_norm_sf(m / se) if se > 0 else (0.0 if m > 0 else 1.0),
        p_faster=_norm_sf(-m / se) if se > 0 else (0.0 if m < 0 else 1.0),
        per_pair=tuple(math.exp(c) for c in centers), n=sum(len(p) for p in used), se=se,
    )


def cycle_estimate(parts: Sequence[tuple[float, float, PairedEstimate]]) -> PairedEstimate | None:
    """The cycle total's ratio from its stages' estimates: ``(weight, base median, estimate)`` each.

    T_head / T_base = sum(s_i * r_i) with s_i each stage's share of the base total; its log-scale
    standard error by the delta method (stages are timed apart, so their errors are independent).
    """
    total = sum(w * b for w, b, _ in parts)
    if total <= 0 or not parts:
        return None
    shares = [(w * b / total, e) for w, b, e in parts]
    t = sum(s * e.ratio for s, e in shares)
    se = math.sqrt(sum((s * e.ratio / t) ** 2 * e.se ** 2 for s, e in shares))
    m = math.log(t)
    k = min(len(e.per_pair) for _, e in shares)
    per_pair = tuple(sum(s * e.per_pair[i] for s, e in shares) for i in range(k))
    return PairedEstimate(
        ratio=t, lo=math.exp(m - _Z95 * se), hi=math.exp(m + _Z95 * se),
        p_slower=_norm_sf(m / se) if se > 0 else (0.0 if m > 0 else 1.0),
        p_faster=_norm_sf(-m / se) if se > 0 else (0.0 if m < 0 else 1.0),
        per_pair=per_pair, n=min(e.n for _, e in shares), se=se,
    )
