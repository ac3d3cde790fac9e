"""Baseline samples + current samples -> a verdict. Pure: numbers in, a record out.

A stage *regresses* only when all of these hold:

1. its median is slower than the baseline's by more than the threshold (after normalising
   for the machine's own speed, when that moved),
2. the difference is significant: one-sided Mann-Whitney U p < alpha and the bootstrap
   95 % interval of the ratio of medians lies above 1,
3. a re-measure says the same (done by the caller; :func:`confirm` combines the two).

When the stage's own noise (the half-width of that interval) is wider than the threshold, the
threshold cannot be honoured; the stage is gated at its noise instead and the verdict says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from . import stats

OK = "ok"
REGRESSED = "regressed"
IMPROVED = "improved"
NEW = "new"
INCONCLUSIVE = "inconclusive"
NOT_COMPARABLE = "not comparable"
OUTCOMES = (REGRESSED, INCONCLUSIVE, NOT_COMPARABLE, NEW, IMPROVED, OK)
#: what decided a verdict (:attr:`Verdict.decided_by`)
BY_TIME, BY_COUNTERS, BY_UNIT, BY_ENVIRONMENT = "time", "counters", "unit", "environment"

#: Below this the reference workload's drift is its own noise: nothing is normalised. On a
#: loaded 2-core runner the reference and a stage react differently to the same contention
#: (seen here: reference 1.065x while a tiny Llama forward moved 1.00x), so normalising
#: small drifts moved real +15 % regressions under the threshold.
MACHINE_NOISE = 0.10
#: Beyond this the machine is too different for a normalised verdict to be trusted.
MACHINE_MAX_DRIFT = 0.35


@dataclass(frozen=True)
class Verdict:
    outcome: str
    threshold: float
    effective_threshold: float
    ratio: float | None = None
    ci: tuple | None = None
    p_value: float | None = None
    machine_factor: float | None = None
    normalised: bool = False
    reason: str = ""
    first_ratio: float | None = None  # before the re-measure, when one was taken
    #: why effective_threshold is above threshold: "noise" (the stage's own) or "processes"
    #: (the baseline's recording processes differ; see judge's process_range); "" when it is not
    gate: str = ""
    #: what decided the outcome: BY_TIME, BY_COUNTERS, BY_UNIT or BY_ENVIRONMENT ("" for a new stage)
    decided_by: str = ""
    #: set while :func:`decide` still needs a measured number (NEEDS_MACHINE, NEEDS_REMEASURE)
    needs: str = ""

    @property
    def change(self) -> float | None:
        return None if self.ratio is None else self.ratio - 1.0

    @property
    def confidence(self) -> float | None:
        return None if self.p_value is None else 1.0 - self.p_value

    @property
    def failed(self) -> bool:
        return self.outcome == REGRESSED


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def machine_off(m: float | None) -> bool:
    """True when the machine reads beyond :data:`MACHINE_MAX_DRIFT` of its recorded speed
    (what :func:`judge` calls too different to normalise); the recording check refuses then."""
    return m is not None and abs(math.log(m)) > math.log(1 + MACHINE_MAX_DRIFT)


def machine_speed(m: float) -> str:
    """``m`` (now over then) as a reader says it: "2.13x slower" / "1.30x faster"."""
    return f"{m:.2f}x slower" if m >= 1 else f"{1 / m:.2f}x faster"


def machine_note(m: float | None) -> str:
    """The machine factor in words: 'this machine is 2.13x slower than when the baseline was recorded'."""
    if m is None:
        return ""
    said = f"this machine is {machine_speed(m)} than when the baseline was recorded"
    if abs(m - 1) <= MACHINE_NOISE:
        return f"{said} (within noise, not normalised)"
    if machine_off(m):
        return f"{said} (too different to normalise: inconclusive)"
    return f"{said} (times normalised by it)"


def machine_far_note(factors: Sequence[float], consequence: str = "so not judged; rerun on a quiet machine") -> str:
    """Why stages went unjudged when the machine read far off: one line for many stages."""
    lo, hi = min(factors), max(factors)
    if machine_speed(lo) == machine_speed(hi):
        read = machine_speed(lo)
    elif lo >= 1:
        read = f"{lo:.2f}x .. {hi:.2f}x slower"
    elif hi < 1:
        read = f"{1 / hi:.2f}x .. {1 / lo:.2f}x faster"
    else:
        read = f"{machine_speed(lo)} .. {machine_speed(hi)}"
    return (
        f"this machine read {read} than when the baseline was recorded: too different to normalise "
        f"(more than {MACHINE_MAX_DRIFT:.0%} off), {consequence}"
    )


def other_key_reason(device_key: str, other_keys: Sequence[str], file: str) -> str:
    """A test with no entry under this run's device key, while ``file`` holds it under ``other_keys``."""
    if not other_keys:
        return ""
    keys = ", ".join(repr(k) for k in other_keys[:3]) + (", ..." if len(other_keys) > 3 else "")
    return (
        f"no baseline for device key {device_key!r} in {file}, which holds this test under {keys}: "
        "record one for this key (--llmcycle-update), or, on the same runner class, "
        f"use that key (--llmcycle-device-key {other_keys[0]}), or compare base against head on this "
        "machine (llmcycle compare)"
    )


#: a stage reading this many times its baseline is never a plain pass: the row carries a warning
WARN_RATIO = 2.0


def slowdown_warning(ratio: float | None, outcome: str) -> str:
    """The warning of a row whose median reads past :data:`WARN_RATIO` times its baseline's, or ""."""
    if ratio is None or ratio <= WARN_RATIO:
        return ""
    return f"reads {ratio:.2f}x its baseline's median ({outcome}): check it before trusting this run"


def _point_ratio(baselines: Sequence[np.ndarray], currents: Sequence[np.ndarray], weights: Sequence[float]) -> float:
    """sum(w * median(current)) / sum(w * median(baseline)) of sorted samples: what stats.ratio_ci returns."""
    b = sum(w * stats.median_of_sorted(x) for w, x in zip(weights, baselines))
    c = sum(w * stats.median_of_sorted(x) for w, x in zip(weights, currents))
    return c / b


def _clearly_within(ratio: float, threshold: float, baselines, currents, weights) -> bool:
    """True when the bootstrap cannot change an "ok": skip it (it costs ~10 ms a stage).

    A point estimate inside the threshold band is "ok" whatever the interval says (the
    effective threshold is never below the threshold), so the bootstrap would only add the
    interval. It is still run for a stage whose own noise (distribution-free median intervals,
    one sort each) reaches half the threshold, so a noisy stage keeps its interval and its
    "gated at" note.
    """
    if not 1 / (1 + threshold) <= ratio <= 1 + threshold:
        return False
    halfwidths = [
        math.hypot(stats.median_ci_halfwidth(b, presorted=True), stats.median_ci_halfwidth(c, presorted=True))
        for w, b, c in zip(weights, baselines, currents)
        if w
    ]
    noise = max(halfwidths, default=math.inf)
    return noise < threshold / 2


#: environment fields that must match for a baseline to be comparable
COMPARED_ENV = ("threads", "torch", "transformers", "dtype")


def env_mismatch(stored: dict, current: dict) -> str | None:
    """Why a baseline taken under ``stored`` cannot judge a run under ``current``, or None."""
    diffs = [
        f"{k} {stored[k]} -> {current[k]}"
        for k in COMPARED_ENV
        if k in stored and k in current and str(stored[k]) != str(current[k])
    ]
    if not diffs:
        return None
    return "baseline recorded under a different environment (" + ", ".join(diffs) + "): re-record with --llmcycle-update"


def judge(
    baseline: Sequence[float] | None,
    current: Sequence[float],
    threshold: float,
    alpha: float = 0.01,
    machine_factor: float | None = None,
    not_comparable: str | None = None,
    process_range: tuple[float, float] | None = None,
) -> Verdict:
    """Verdict for one stage from its stored and current samples (same unit).

    ``process_range`` is (fastest, slowest) median of the processes the baseline was recorded
    in, over the baseline's median (``--llmcycle-update-append``): the stage then fails only
    when slower than the slowest of them by more than the threshold (and is "improved" only
    when faster than the fastest by as much), since one process's median can sit anywhere in
    that range on unchanged code.
    """
    if baseline is None:
        return Verdict(NEW, threshold, threshold, reason="no baseline yet: record one with --llmcycle-update")
    if not_comparable:
        return Verdict(NOT_COMPARABLE, threshold, threshold, reason=not_comparable)
    # sorted once: medians, the median intervals and the rank test all read the sorted arrays
    base_s = stats.sorted_array(baseline)
    cur = stats.sorted_array(current)
    normalised = False
    machine_off = False
    if machine_factor is not None:
        if abs(math.log(machine_factor)) > math.log(1 + MACHINE_MAX_DRIFT):
            machine_off = True
        elif abs(machine_factor - 1) > MACHINE_NOISE:
            cur = cur / machine_factor
            normalised = True

    def rank_p(x: np.ndarray, y: np.ndarray) -> float:
        return stats.mann_whitney_greater(x, y, presorted=True)

    ratio = _point_ratio([base_s], [cur], [1.0])
    if _clearly_within(ratio, threshold, [base_s], [cur], [1.0]):
        p = rank_p(cur, base_s) if ratio >= 1 else rank_p(base_s, cur)
        return Verdict(
            OK, threshold, threshold, ratio=ratio, p_value=p, machine_factor=machine_factor, normalised=normalised,
            reason=f"within {threshold * 100:.1f}%",
        )
    est = stats.ratio_ci([base_s], [cur])
    ratio, lo, hi = est.ratio, est.lo, est.hi
    noise = est.rel_halfwidth
    eff = max(threshold, noise)
    noisy = eff > threshold
    eff_slow, eff_fast = _process_gates(eff, threshold, process_range)
    base = Verdict(
        OK, threshold, eff_slow, ratio=ratio, ci=(lo, hi), machine_factor=machine_factor, normalised=normalised,
        gate=_gate(threshold, eff, eff_slow),
    )
    noise_note = (
        f"; stage noise (95% CI +-{noise * 100:.1f}%) is wider than the {threshold * 100:g}% threshold, "
        f"so it is gated at {eff * 100:.1f}%"
        if noisy
        else ""
    ) + _process_note(process_range, eff_slow, eff)
    slower = ratio > 1 + eff_slow
    faster = ratio < 1 / (1 + eff_fast)
    if slower:
        p = rank_p(cur, base_s)
        significant = p < alpha and lo > 1.0
    elif faster:
        p = rank_p(base_s, cur)
        significant = p < alpha and hi < 1.0
    else:
        p = rank_p(cur, base_s) if ratio >= 1 else rank_p(base_s, cur)
        significant = False
    base = replace(base, p_value=p)
    if (slower or faster) and machine_off:
        return replace(base, outcome=INCONCLUSIVE, reason=f"{_pct(ratio - 1)}, but {machine_note(machine_factor)}")
    if slower and significant:
        return replace(base, outcome=REGRESSED, reason=f"{_pct(ratio - 1)} slower than baseline{noise_note}")
    if faster and significant:
        return replace(
            base,
            outcome=IMPROVED,
            reason=f"{_pct(ratio - 1)} faster than baseline: record it with --llmcycle-update{noise_note}",
        )
    if slower or faster:
        return replace(
            base,
            outcome=INCONCLUSIVE,
            reason=f"{_pct(ratio - 1)} but not significant (p={p:.2g}){noise_note}",
        )
    return replace(base, reason=f"within {eff_slow * 100:.1f}%{noise_note}")


def _process_gates(eff: float, threshold: float, process_range: tuple[float, float] | None) -> tuple[float, float]:
    """(slower, faster) gates: ``eff``, widened to the threshold past the slowest / fastest recorded process."""
    if process_range is None:
        return eff, eff
    fastest, slowest = process_range
    slow = eff if slowest <= 1 else max(eff, slowest * (1 + threshold) - 1)
    fast = eff if fastest >= 1 else max(eff, (1 + threshold) / fastest - 1)
    return slow, fast


def ok_band(threshold: float, process_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """The widest band of ratios :func:`judge` calls "ok" at this threshold when the stage's noise is
    below it: ``[1/(1+t), 1+t]``, widened past the recording processes (the sequential stop's
    "outside" test, :mod:`pytest_llmcycle.engine.sequential`)."""
    slow, fast = _process_gates(threshold, threshold, process_range)
    return 1.0 / (1.0 + fast), 1.0 + slow


def _gate(threshold: float, eff: float, eff_slow: float) -> str:
    return "processes" if eff_slow > eff else "noise" if eff > threshold else ""


def _process_note(process_range: tuple[float, float] | None, eff_slow: float, eff: float) -> str:
    if process_range is None or eff_slow <= eff:
        return ""
    fastest, slowest = process_range
    return (
        f"; recorded in several processes whose medians span {_pct(fastest - 1)} .. {_pct(slowest - 1)}, "
        f"so it is gated at {eff_slow * 100:.1f}% (the slowest process + the threshold)"
    )


def confirm(first: Verdict, second: Verdict) -> Verdict:
    """Combine a suspected regression with its re-measure: only a repeat makes it stick."""
    if second.outcome == REGRESSED:
        return replace(
            second,
            first_ratio=first.ratio,
            reason=f"{second.reason}; confirmed by a re-measure (first {_pct((first.ratio or 1) - 1)})",
        )
    return replace(
        second,
        outcome=INCONCLUSIVE,
        first_ratio=first.ratio,
        reason=(
            f"first measurement {_pct((first.ratio or 1) - 1)}, re-measure {_pct((second.ratio or 1) - 1)}: "
            "not confirmed, not gated"
        ),
    )


def judge_cycle(
    baselines: Sequence[Sequence[float]],
    currents: Sequence[Sequence[float]],
    weights: Sequence[float],
    threshold: float,
    alpha: float = 0.01,
    machine_factor: float | None = None,
    process_range: tuple[float, float] | None = None,
) -> Verdict:
    """Verdict for the cycle total T = sum(weight * median) over stages, by bootstrap.

    Stages are resampled independently; the p-value is the bootstrap share of totals that did
    not get slower. The stages it sums have each been through their own re-measure.
    ``process_range`` is as in :func:`judge`, for the total.
    """
    m = machine_factor if machine_factor is not None and abs(machine_factor - 1) > MACHINE_NOISE else None
    machine_off = machine_factor is not None and abs(math.log(machine_factor)) > math.log(1 + MACHINE_MAX_DRIFT)
    if machine_off:
        m = None
    bases = [stats.sorted_array(b) for b in baselines]
    curs = [stats.sorted_array(c) / m for c in currents] if m else [stats.sorted_array(c) for c in currents]
    ratio = _point_ratio(bases, curs, weights)
    if _clearly_within(ratio, threshold, bases, curs, weights):
        return Verdict(
            OK, threshold, threshold, ratio=ratio, machine_factor=machine_factor, normalised=m is not None,
            reason=f"within {threshold * 100:.1f}%",
        )
    est = stats.ratio_ci(bases, curs, weights=weights)
    ratio, lo, hi = est.ratio, est.lo, est.hi
    noise = est.rel_halfwidth
    eff = max(threshold, noise)
    eff_slow, eff_fast = _process_gates(eff, threshold, process_range)
    note = _process_note(process_range, eff_slow, eff)
    base = Verdict(
        OK, threshold, eff_slow, ratio=ratio, ci=(lo, hi), machine_factor=machine_factor, normalised=m is not None,
        gate=_gate(threshold, eff, eff_slow),
    )
    if ratio >= 1:
        base = replace(base, p_value=est.p_slower)
    else:
        base = replace(base, p_value=est.p_faster)
    slower, faster = ratio > 1 + eff_slow, ratio < 1 / (1 + eff_fast)
    if machine_off and (slower or faster):
        # as in judge(): a machine this far off its baseline speed cannot gate the total either
        return replace(base, outcome=INCONCLUSIVE, reason=f"cycle {_pct(ratio - 1)}, but {machine_note(machine_factor)}")
    if slower and lo > 1.0 and est.p_slower < alpha:
        return replace(base, outcome=REGRESSED, reason=f"cycle {_pct(ratio - 1)} slower than baseline{note}")
    if faster and hi < 1.0 and est.p_faster < alpha:
        return replace(base, outcome=IMPROVED, reason=f"cycle {_pct(ratio - 1)} faster than baseline{note}")
    if slower or faster:
        return replace(base, outcome=INCONCLUSIVE, reason=f"cycle {_pct(ratio - 1)} but its 95% CI includes no change")
    return replace(base, reason=f"within {eff_slow * 100:.1f}%{note}")


# --------------------------------------------------------------------------- the judging rule

#: How a suspected regression is confirmed before it fails a stage (:attr:`Rules.confirmation`).
CONFIRM_REMEASURE = "remeasure"  # a second measurement, asked for with Verdict.needs == NEEDS_REMEASURE
CONFIRM_HALVES = "halves"  # a block's runs: the first half measures, the second confirms
CONFIRM_NOT_NEEDED = "not needed"  # the samples stand as they are (remeasure=false; stored samples)
CONFIRM_IMPOSSIBLE = "impossible"  # no way to repeat it (record() without remeasure=): never gated
#: a block stage needs this many runs to be split into a measure and a confirming half
BLOCK_MIN_SAMPLES = 10

#: what :func:`decide` asks for before it can give a final verdict (:attr:`Verdict.needs`)
NEEDS_MACHINE = "machine factor"
NEEDS_REMEASURE = "re-measure"


@dataclass(frozen=True)
class Evidence:
    """One side of a comparison: a stage's samples (ms, any order) and what they were taken under.

    A cycle total is given by ``parts``: ``(weight, samples_ms)`` of each stage it sums, weight
    being how many of the stage's units one cycle holds.
    """

    samples_ms: Sequence[float] = ()
    unit: str = "call"
    env: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[str, Any] = field(default_factory=dict)
    #: a baseline's (fastest, slowest) recording process over its median; see :func:`judge`
    process_range: tuple[float, float] | None = None
    parts: tuple = ()


@dataclass(frozen=True)
class Rules:
    """The settings a verdict is judged under."""

    threshold: float = 0.10
    alpha: float = 0.01
    confirmation: str = CONFIRM_REMEASURE
    #: ask for the machine factor (:data:`NEEDS_MACHINE`) when the time looks changed
    machine_check: bool = False
    #: recording a baseline (--llmcycle-update): nothing is confirmed, counters new to it are "new"
    recording: bool = False
    #: which counters gate and how tightly (:class:`~.counts.CounterPolicy`, or what
    #: :func:`~.counts.parse_policy` reads); None: the default policy
    counters: Any = None


@dataclass(frozen=True)
class Case:
    """Everything one verdict is decided from. The caller adds what :func:`decide` asks for.

    ``machine_factor`` is this machine's speed now over when the baseline was recorded
    (reference workload; None: unknown). ``remeasured`` is the confirming measurement and
    ``remeasured_machine_factor`` the machine factor taken with it.
    """

    baseline: Evidence | None
    current: Evidence
    rules: Rules = Rules()
    machine_factor: float | None = None
    machine_checked: bool = False
    remeasured: Evidence | None = None
    remeasured_machine_factor: float | None = None
    #: why there is no baseline, when ``baseline`` is None and the default reason does not fit
    no_baseline_reason: str = ""
    #: base against head (``--llmcycle-against``): the stage's matched rounds, see :class:`Paired`
    paired: "Paired | None" = None
    #: with no ``baseline``: another device key's entry of this stage whose counters still judge
    #: this run (same device kind, library versions and dtype; counters need not the same CPU),
    #: and that key (:func:`_counters_elsewhere`)
    counters_baseline: Evidence | None = None
    counters_key: str = ""


def decide(case: Case) -> Verdict:
    """The one judging rule: every stage and cycle outcome, in the plugin and in ``llmcycle compare``.

    In order: comparability (unit, environment), deterministic counters (a counter that grew
    regresses without a re-measure), time (threshold and noise gating, the recording
    processes' spread, the machine factor: :func:`judge`, :func:`judge_cycle`), then the
    confirming re-measure (:func:`confirm`). Pure: when it needs a number that has to be
    measured, it returns a verdict whose ``needs`` says which (:data:`NEEDS_MACHINE`,
    :data:`NEEDS_REMEASURE`); the caller measures, adds it to the case and asks again.
    """
    r, base, cur = case.rules, case.baseline, case.current
    if case.paired is not None:  # --llmcycle-against: the base ran beside the head, round by round
        return _decide_paired(case)
    if base is None:
        v = judge(None, cur.samples_ms, r.threshold, r.alpha)
        v = replace(v, reason=case.no_baseline_reason) if case.no_baseline_reason else v
        return _counters_elsewhere(case, v) if case.counters_baseline is not None else v
    if base.unit != cur.unit:
        return Verdict(
            NOT_COMPARABLE, r.threshold, r.threshold, decided_by=BY_UNIT,
            reason=f"unit changed: baseline per {base.unit}, now per {cur.unit}: re-record with --llmcycle-update",
        )
    mismatch = env_mismatch(dict(base.env), dict(cur.env))
    if mismatch:
        return Verdict(NOT_COMPARABLE, r.threshold, r.threshold, reason=mismatch, decided_by=BY_ENVIRONMENT)
    if cur.parts:
        return _decide_cycle(case)
    from .counts import compare as compare_counters, decided, stale

    changed = compare_counters(base.counters, cur.counters, r.counters)
    grew = [c for c in changed if c.increased]
    v = _time(case, cur, case.machine_factor)
    if grew:  # deterministic: no machine check, no re-measure can undo it; the reason leads with them
        return replace(v, outcome=REGRESSED, reason=decided(grew, cur.unit, v.ratio, True), decided_by=BY_COUNTERS, needs="")
    if v.needs:
        return v
    v = _confirm(case, v)
    if v.needs:
        return v
    if changed and v.outcome in (OK, INCONCLUSIVE):  # fell: "improved", said to be by counters
        return replace(v, outcome=IMPROVED, reason=decided(changed, cur.unit, v.ratio, False), decided_by=BY_COUNTERS)
    if r.recording and cur.counters and not base.counters and v.outcome == OK:
        return replace(v, outcome=NEW, reason="counters not in the baseline yet")
    old_counts = stale(base.counters, cur.counters)
    if old_counts:  # never a false counter regression; time still judges
        if r.recording and v.outcome == OK:
            return replace(v, outcome=NEW, reason=old_counts)
        return replace(v, reason=f"{v.reason}; {old_counts}" if v.reason else old_counts)
    return v


def _counters_elsewhere(case: Case, new: Verdict) -> Verdict:
    """Counters judged against another device key's entry while time has no baseline here.

    FLOPs, op counts and bytes do not depend on the CPU model, so a newcomer's machine (a
    laptop, another runner class) still fails a stage whose counters grew: regressed, decided by
    counters. Time stays not judged: unchanged counters leave the stage ``new`` with its reason,
    and say so; counters that fell make it ``improved`` by counters.
    """
    from .counts import compare as compare_counters, describe

    other, cur = case.counters_baseline, case.current
    assert other is not None
    if not other.counters or not cur.counters or other.unit != cur.unit:
        return new
    source = f"counters of device key {case.counters_key!r} (same device kind and library versions)"
    from .counts import stale

    if stale(other.counters, cur.counters):  # counted by other rules: say so, never "unchanged"
        return replace(new, reason=f"{new.reason}; {source}: {stale(other.counters, cur.counters)}" if new.reason else f"{source}: {stale(other.counters, cur.counters)}")
    changed = compare_counters(other.counters, cur.counters, case.rules.counters)
    grew = [c for c in changed if c.increased]
    time_note = f"time not judged: {new.reason}" if new.reason else "time not judged"
    if grew:
        return replace(new, outcome=REGRESSED, reason=f"{describe(grew, cur.unit)}; {source}; {time_note}", decided_by=BY_COUNTERS)
    if changed:
        return replace(
            new, outcome=IMPROVED, decided_by=BY_COUNTERS,
            reason=f"{describe(changed, cur.unit)}; {source}: record it with --llmcycle-update; {time_note}",
        )
    return replace(new, reason=f"{new.reason}; {source} unchanged" if new.reason else f"{source} unchanged")


def _time(case: Case, cur: Evidence, machine_factor: float | None) -> Verdict:
    """The time verdict of ``cur`` against the baseline; asks for the machine factor when it matters."""
    r, base = case.rules, case.baseline
    assert base is not None
    v = replace(
        judge(base.samples_ms, cur.samples_ms, r.threshold, r.alpha, machine_factor, None, base.process_range), decided_by=BY_TIME,
    )
    if v.outcome in (REGRESSED, IMPROVED) and r.machine_check and not case.machine_checked:
        return replace(v, needs=NEEDS_MACHINE)
    return v


def _confirm(case: Case, v: Verdict) -> Verdict:
    """A suspected regression confirmed (or not) as ``case.rules.confirmation`` says."""
    r = case.rules
    if v.outcome != REGRESSED or r.recording or r.confirmation == CONFIRM_NOT_NEEDED:
        return v
    if r.confirmation == CONFIRM_IMPOSSIBLE:
        return replace(v, outcome=INCONCLUSIVE, reason=v.reason + "; no re-measure possible, not gated")
    if r.confirmation == CONFIRM_HALVES:
        cur = np.asarray(case.current.samples_ms, dtype=float)  # in run order: the halves are early and late runs
        if len(cur) < BLOCK_MIN_SAMPLES:
            return replace(
                v,
                outcome=INCONCLUSIVE,
                reason=v.reason + f"; only {len(cur)} run(s) of the block, {BLOCK_MIN_SAMPLES} needed to confirm: not gated",
            )
        half = len(cur) // 2
        first = _time(case, replace(case.current, samples_ms=cur[:half]), case.machine_factor)
        second = _time(case, replace(case.current, samples_ms=cur[half:]), case.machine_factor)
        # the halves play measurement and re-measure: both must regress
        return confirm(first, second) if first.outcome == REGRESSED else confirm(v, first)
    if case.remeasured is None:
        return replace(v, needs=NEEDS_REMEASURE)
    factor = case.remeasured_machine_factor if r.machine_check else case.machine_factor
    return confirm(v, _time(replace(case, machine_checked=True), case.remeasured, factor))


def _decide_cycle(case: Case) -> Verdict:
    r, base, cur = case.rules, case.baseline, case.current
    assert base is not None
    weights = [w for w, _ in cur.parts]
    v = judge_cycle(
        [s for _, s in base.parts], [s for _, s in cur.parts], weights, r.threshold, r.alpha, case.machine_factor,
        base.process_range,
    )
    return replace(v, decided_by=BY_TIME)


# --------------------------------------------------------------------------- base against head

#: in --llmcycle-against mode the process pairs play measurement and re-measure: every pair must
#: point the same way for a stage to regress (with one pair: its early and late rounds)
CONFIRM_PAIRS = "pairs"


@dataclass(frozen=True)
class Paired:
    """A stage timed beside its base (``--llmcycle-against``).

    ``log_ratios``: per process pair, ``log(head/base)`` of its matched rounds in turn order
    (:func:`pytest_llmcycle.engine.paired.match_rounds`). ``base_label`` names the base in
    reasons ("origin/main @ 1a2b3c4"). ``unpaired``: the base timed this stage apart from the
    head (stages reordered): judged from the two sides' samples as a committed baseline is.
    A cycle total gives ``parts``: ``(weight, base median, PairedEstimate)`` of each stage.
    """

    log_ratios: tuple = ()
    base_label: str = "the base"
    unpaired: bool = False
    parts: tuple = ()
    #: "" when the rounds were compared by wall time, else the note that they were compared by
    #: CPU time (busy neighbours: :func:`pytest_llmcycle.engine.paired.cpu_basis`); then
    #: ``wall_log_ratios`` holds the same rounds' wall-time log ratios
    basis: str = ""
    wall_log_ratios: tuple = ()


def _paired_pct(ratios: Sequence[float]) -> str:
    return ", ".join(_pct(x - 1) for x in ratios)


def judge_paired(est: Any, threshold: float, alpha: float, base_label: str, what: str = "") -> Verdict:
    """The time verdict of a stage (or, with ``what="cycle "``, the cycle) from paired rounds.

    Same rule as :func:`judge`: slower than the threshold (or the interval's own half-width when
    that is wider), significant (one-sided p < alpha and the 95 % interval above 1), and every
    process pair pointing the same way; otherwise inconclusive or ok.
    """
    if est is None:
        return Verdict(
            INCONCLUSIVE, threshold, threshold, decided_by=BY_TIME,
            reason=f"too few rounds matched against {base_label} to judge: raise --llmcycle-budget",
        )
    noise = est.rel_halfwidth
    eff = max(threshold, noise)
    base = Verdict(OK, threshold, eff, ratio=est.ratio, ci=(est.lo, est.hi), decided_by=BY_TIME, gate="noise" if eff > threshold else "")
    note = (
        f"; the interval (+-{noise * 100:.1f}%) is wider than the {threshold * 100:g}% threshold, so it is gated at {eff * 100:.1f}%"
        if eff > threshold else ""
    )
    pairs = f" ({len(est.per_pair)} process pair{'s' if len(est.per_pair) != 1 else ''}: {_paired_pct(est.per_pair)})"
    slower, faster = est.ratio > 1 + eff, est.ratio < 1 / (1 + eff)
    p = est.p_slower if est.ratio >= 1 else est.p_faster
    base = replace(base, p_value=p)
    if slower and est.p_slower < alpha and est.lo > 1.0:
        return replace(base, outcome=REGRESSED, reason=f"{what}{_pct(est.ratio - 1)} slower than {base_label}{pairs}{note}")
    if faster and est.p_faster < alpha and est.hi < 1.0:
        return replace(base, outcome=IMPROVED, reason=f"{what}{_pct(est.ratio - 1)} faster than {base_label}{pairs}{note}")
    if slower or faster:
        return replace(base, outcome=INCONCLUSIVE, reason=f"{what}{_pct(est.ratio - 1)} against {base_label} but not significant (p={p:.2g}){pairs}{note}")
    return replace(base, reason=f"{what}within {eff * 100:.1f}% of {base_label}{pairs}{note}")


def _confirm_pairs(v: Verdict, per_pair: Sequence[float], halves: tuple[Verdict, Verdict] | None) -> Verdict:
    """A regression (or improvement) stands only when every process pair points the same way."""
    if v.outcome not in (REGRESSED, IMPROVED):
        return v
    if len(per_pair) >= 2:
        agree = all(x > 1 for x in per_pair) if v.outcome == REGRESSED else all(x < 1 for x in per_pair)
        if agree:
            return v
        return replace(v, outcome=INCONCLUSIVE, reason=f"{v.reason}; the process pairs disagree: not gated")
    if halves is None:
        return v
    first, second = halves
    if first.outcome == v.outcome and second.outcome == v.outcome:
        return replace(v, reason=f"{v.reason}; early and late rounds agree ({_pct((first.ratio or 1) - 1)}, {_pct((second.ratio or 1) - 1)})")
    return replace(
        v, outcome=INCONCLUSIVE, first_ratio=first.ratio,
        reason=f"{v.reason}; early rounds {_pct((first.ratio or 1) - 1)}, late rounds {_pct((second.ratio or 1) - 1)}: not confirmed, not gated",
    )


def _decide_paired(case: Case) -> Verdict:
    """:func:`decide` for a stage timed beside its base: unit, counters (exact: same machine, same
    job, so never "not comparable"), then time from the paired rounds."""
    from . import paired as pm
    from .counts import compare as compare_counters, describe

    r, base, cur, pr = case.rules, case.baseline, case.current, case.paired
    assert pr is not None
    if base is None:
        return Verdict(NEW, r.threshold, r.threshold, reason=case.no_baseline_reason or f"not in {pr.base_label}: a new stage")
    if base.unit != cur.unit:
        return Verdict(
            NOT_COMPARABLE, r.threshold, r.threshold, decided_by=BY_UNIT,
            reason=f"unit changed: per {base.unit} in {pr.base_label}, now per {cur.unit}",
        )
    if pr.parts:
        est = pm.cycle_estimate(pr.parts)
        return _confirm_pairs(judge_paired(est, r.threshold, r.alpha, pr.base_label, "cycle "), est.per_pair if est else (), None)
    if pr.unpaired:
        v = replace(judge(base.samples_ms, cur.samples_ms, r.threshold, r.alpha), decided_by=BY_TIME)
        v = replace(v, reason=f"{v.reason} (against {pr.base_label}, timed apart: the stages ran in another order)")
    else:
        est = pm.estimate(pr.log_ratios)
        v = judge_paired(est, r.threshold, r.alpha, pr.base_label)
        halves = None
        if est is not None and len(est.per_pair) == 1 and v.outcome in (REGRESSED, IMPROVED):
            xs = list(pr.log_ratios[0])
            h = len(xs) // 2
            halves = tuple(judge_paired(pm.estimate([part]), r.threshold, r.alpha, pr.base_label) for part in (xs[:h], xs[h:]))
        v = _confirm_pairs(v, est.per_pair if est else (), halves)  # type: ignore[arg-type]
        if pr.basis:
            v = replace(v, reason=f"{v.reason}; {pr.basis}")
            by_wall = judge_paired(pm.estimate(pr.wall_log_ratios), r.threshold, r.alpha, pr.base_label)
            if by_wall.outcome == REGRESSED and v.outcome != REGRESSED:
                # slower by wall time only: the head waited, or neighbours took its rounds' CPU; never ok
                v = replace(
                    v, outcome=INCONCLUSIVE,
                    reason=f"{v.reason}; by wall time {_pct((by_wall.ratio or 1) - 1)} slower: its rounds had less of the CPU "
                           "than the base's (a wait in the head, or busy neighbours): not gated",
                )
    changed = compare_counters(base.counters, cur.counters, r.counters)
    grew = [c for c in changed if c.increased]
    if grew:  # deterministic, and both sides ran here: a counter that grew regresses
        return replace(v, outcome=REGRESSED, reason=f"{describe(grew, cur.unit)} against {pr.base_label}", decided_by=BY_COUNTERS)
    if changed and v.outcome in (OK, INCONCLUSIVE):
        return replace(v, outcome=IMPROVED, reason=f"{describe(changed, cur.unit)} against {pr.base_label}", decided_by=BY_COUNTERS)
    return v
