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
#: Default gate per counter (relative tolerance; the rest are compared exactly, up to float
#: rounding). Evidence (tests/test_counters_policy.py, the hand-written GPT of
#: tests/counters_gpt.py): refactors that only move views (unsqueeze/squeeze round trips, a
#: reshape of a contiguous tensor, renames, reordered independent ops) leave FLOPs, ops and bytes
#: exactly equal, while the smallest planted regression moved ops by one and bytes by +1.7 %
#: (a sampler's unused sort). FLOPs and ops are exact; bytes get 1 %, below that smallest change.
#: The caching allocator's peak can move by a block when unrelated allocations change.
TOLERANCE = {FLOPS: 0.0, OPS: 0.0, ALLOC: 0.01, PEAK: 0.02}
EXACT = 1e-9
#: the counters' stamp: which counting rules produced them (measure/counters.py). Counters stamped
#: with another (or, from before the stamp, none: version 1) are not compared.
SEMANTICS_KEY = "counted_by"
SEMANTICS = 2
STALE = "counters not comparable (counted by an older version of pytest-llmcycle): re-record with --llmcycle-update"
EXAMPLE = "flops:0, alloc_bytes:5%, aten_ops:off"


def stamp(counters: Mapping[str, Any] | None) -> dict:
    """``counters`` with this version's :data:`SEMANTICS` stamp ({} stays {})."""
    return {**counters, SEMANTICS_KEY: SEMANTICS} if counters else {}


def stale(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str:
    """:data:`STALE` when both sides have counters, counted under different rules; else ""."""
    if not baseline or not current:
        return ""
    return STALE if baseline.get(SEMANTICS_KEY, 1) != current.get(SEMANTICS_KEY, 1) else ""


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class CounterPolicy:
    """Which counters gate and how tightly: a relative tolerance per counter, None for off.

    ``overrides`` are (counter, tolerance) pairs on top of :data:`TOLERANCE`; ``enabled=False``
    switches every counter off (``counters=false``). False when no counter gates: then none is taken.
    """

    overrides: tuple = ()
    enabled: bool = True

    def tolerance(self, name: str) -> float | None:
        for n, t in self.overrides:
            if n == name:
                return t
        return TOLERANCE.get(name, 0.0) if self.enabled else None

    def __bool__(self) -> bool:
        return any(self.tolerance(n) is not None for n in COUNTERS)

    def __str__(self) -> str:
        if not self:
            return "off"
        return ", ".join(f"{n}:{_fmt_tol(self.tolerance(n))}" for n in COUNTERS)


def _fmt_tol(t: float | None) -> str:
    return "off" if t is None else "0" if t == 0 else f"{t * 100:g}%"


DEFAULT_POLICY = CounterPolicy()
OFF_POLICY = CounterPolicy(enabled=False)
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_policy(value: Any) -> CounterPolicy:
    """``true``/``false``, ``"flops:0, alloc_bytes:5%, aten_ops:off"``, a mapping or a policy ->
    a :class:`CounterPolicy`; a ValueError says what is wrong and shows a valid value.

    A tolerance is ``off``, ``0`` (exact), a percentage (``5%``) or a fraction below 1 (``0.05``);
    counters not named keep their default (:data:`TOLERANCE`).
    """
    if isinstance(value, CounterPolicy):
        return value
    if isinstance(value, bool):
        return DEFAULT_POLICY if value else OFF_POLICY
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in _ON:
            return DEFAULT_POLICY
        if text.lower() in _OFF:
            return OFF_POLICY
        items = []
        for part in (p.strip() for p in text.replace(";", ",").split(",")):
            if not part:
                continue
            name, sep, tol = part.partition(":")
            if not sep:
                raise ValueError(f"{part!r} is not true, false or COUNTER:TOLERANCE; e.g. {EXAMPLE!r}")
            items.append((name.strip(), tol.strip()))
        if not items:
            raise ValueError(f"no counter given; e.g. {EXAMPLE!r}, or true / false")
    else:
        raise ValueError(f"expected true, false or a text like {EXAMPLE!r} (got {type(value).__name__})")
    out = []
    for name, tol in items:
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}; the counters are {', '.join(COUNTERS)}, e.g. {EXAMPLE!r}")
        out.append((name, _tolerance(name, tol)))
    return CounterPolicy(tuple(out))


def _tolerance(name: str, tol: Any) -> float | None:
    if tol is None or tol is False or (isinstance(tol, str) and tol.lower() in ("off", "none", "false")):
        return None
    if isinstance(tol, str) and tol.lower() == "exact":
        return 0.0
    try:
        if isinstance(tol, bool):
            raise ValueError
        t = float(tol[:-1]) / 100 if isinstance(tol, str) and tol.endswith("%") else float(tol)
    except ValueError:
        raise ValueError(f"{name}:{tol} is not a tolerance: give off, 0 (exact), a percentage like 5% or a fraction like 0.05") from None
    if not (math.isfinite(t) and 0 <= t < 1):
        hint = f"; did you mean {name}:{tol}%?" if isinstance(tol, (int, float, str)) and 1 <= t < 100 and not str(tol).endswith("%") else ""
        raise ValueError(f"{name}:{tol}: a tolerance is at least 0 and below 100%{hint}")
    return t


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


def compare(
    baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None, policy: CounterPolicy | None = None,
) -> list[CounterChange]:
    """Counters present in both whose values differ beyond their tolerance under ``policy``
    (default :data:`DEFAULT_POLICY`), in display order; none when they are :func:`stale`."""
    if not baseline or not current or stale(baseline, current):
        return []
    policy = DEFAULT_POLICY if policy is None else parse_policy(policy)
    out = []
    names = [n for n in COUNTERS if n in baseline and n in current]
    names += sorted(n for n in set(baseline) & set(current) if n not in COUNTERS and n != SEMANTICS_KEY)
    for name in names:
        b, c = baseline[name], current[name]
        tol = policy.tolerance(name)
        if tol is None or not (_numeric(b) and _numeric(c)):
            continue
        if abs(c - b) > max(tol, EXACT) * max(abs(b), 1.0):
            out.append(CounterChange(name, float(b), float(c)))
    return out


def decided(changes: list[CounterChange], unit: str, time_ratio: float | None, failed: bool) -> str:
    """The reason of a verdict counters decided, leading with that:
    "failed on counters: flops +63.0% per token (1.9 -> 3.1 MFLOP); time +11.0%, not judged on its own"."""
    per = "" if unit == "call" else f" per {unit}"
    what = "; ".join(f"{c.name} {c.describe().rsplit('(', 1)[1].rstrip(')')}{per} ({fmt_count(c.name, c.baseline)} -> "
                     f"{fmt_count(c.name, c.current)})" for c in changes)
    time = "time not measured against a baseline" if time_ratio is None else f"time {(time_ratio - 1) * 100:+.1f}%, not judged on its own"
    head = "failed on counters" if failed else "improved on counters"
    tail = "" if failed else ": record it with --llmcycle-update"
    return f"{head}: {what}; {time} (deterministic counters, no re-measure){tail}"


def regressions(
    baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None, policy: CounterPolicy | None = None,
) -> list[CounterChange]:
    """Counters that grew past their tolerance: a deterministic regression."""
    return [c for c in compare(baseline, current, policy) if c.increased]


def describe(changes: list[CounterChange], unit: str = "call") -> str:
    per = "" if unit == "call" else f" per {unit}"
    return "; ".join(c.describe() for c in changes) + f"{per} (deterministic counters: compared exactly, no re-measure)"


def counter_lines(
    baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None, unit: str = "call", policy: CounterPolicy | None = None,
) -> list[str]:
    """Failure-message lines for counters that grew (one a line, naming baseline and current)."""
    per = "" if unit == "call" else f" per {unit}"
    return [
        f"  counter   {c.name}{per}: baseline {fmt_count(c.name, c.baseline)}, current {fmt_count(c.name, c.current)} "
        f"({c.describe().rsplit('(', 1)[1]}; deterministic, compared exactly, no re-measure"
        for c in regressions(baseline, current, policy)
    ]


def decided_part(reason: str) -> str:
    """The counters of a reason :func:`decided` wrote, without their values ("flops +63.00% per
    token"), for a table's change cell; "" for any other reason."""
    import re

    for head in ("failed on counters: ", "improved on counters: "):
        if reason.startswith(head):
            return re.sub(r" \([^()]*->[^()]*\)", "", reason[len(head):].split("; time ", 1)[0])
    return ""


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
