"""Comparing deterministic counters (FLOPs, aten ops, bytes): which changed, by how much, in words.

Pure Python: the verdict engine judges counters with it, and ``measure.counters`` counts them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

#: the counters, in display order
FLOPS, OPS, ALLOC, PEAK = "flops", "aten_ops", "alloc_bytes", "peak_bytes"
COUNTERS = (FLOPS, OPS, ALLOC, PEAK)
#: relative tolerance per counter; the rest are compared exactly (up to float rounding).
#: The caching allocator's peak can move by a block when unrelated allocations change.
TOLERANCE = {PEAK: 0.02}
EXACT = 1e-9


# --------------------------------------------------------------------------- comparison (pure)


@dataclass(frozen=True)
class CounterChange:
    name: str
    baseline: float
    current: float

    @property
    def ratio(self) -> float:
        return self.current / self.baseline if self.baseline else math.inf

    @property
    def increased(self) -> bool:
        return self.current > self.baseline

    def describe(self) -> str:
        if self.baseline and self.current:
            how = f"{self.ratio:.3g}x" if self.ratio >= 2 or self.ratio <= 0.5 else f"{(self.ratio - 1) * 100:+.2f}%"
        else:
            how = "from zero" if not self.baseline else "to zero"
        return f"{self.name} {fmt_count(self.name, self.baseline)} -> {fmt_count(self.name, self.current)} ({how})"


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def compare(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[CounterChange]:
    """Counters present in both whose values differ beyond their tolerance, in display order."""
    if not baseline or not current:
        return []
    out = []
    names = [n for n in COUNTERS if n in baseline and n in current]
    names += sorted(n for n in set(baseline) & set(current) if n not in COUNTERS)
    for name in names:
        b, c = baseline[name], current[name]
        if not (_numeric(b) and _numeric(c)):
            continue
        tol = TOLERANCE.get(name, EXACT)
        if abs(c - b) > tol * max(abs(b), 1.0):
            out.append(CounterChange(name, float(b), float(c)))
    return out


def regressions(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[CounterChange]:
    """Counters that grew: a deterministic regression."""
    return [c for c in compare(baseline, current) if c.increased]


def describe(changes: list[CounterChange], unit: str = "call") -> str:
    per = "" if unit == "call" else f" per {unit}"
    return "; ".join(c.describe() for c in changes) + f"{per} (deterministic counters: compared exactly, no re-measure)"


def counter_lines(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None, unit: str = "call") -> list[str]:
    """Failure-message lines for counters that grew (one a line, naming baseline and current)."""
    per = "" if unit == "call" else f" per {unit}"
    return [
        f"  counter   {c.name}{per}: baseline {fmt_count(c.name, c.baseline)}, current {fmt_count(c.name, c.current)} "
        f"({c.describe().rsplit('(', 1)[1]}; deterministic, compared exactly, no re-measure"
        for c in regressions(baseline, current)
    ]


def fmt_count(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if name.endswith("bytes"):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(v) >= size:
                return f"{v / size:.4g} {unit}"
        return f"{v:.4g} B"
    if name == FLOPS:
        for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
            if abs(v) >= size:
                return f"{v / size:.4g} {unit}"
    return f"{v:.6g}"
