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
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from . import stats

OK = "ok"
REGRESSED = "regressed"
IMPROVED = "improved"
NEW = "new"
INCONCLUSIVE = "inconclusive"
NOT_COMPARABLE = "not comparable"
OUTCOMES = (REGRESSED, INCONCLUSIVE, NOT_COMPARABLE, NEW, IMPROVED, OK)

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


def machine_note(m: float | None) -> str:
    if m is None:
        return ""
    if abs(m - 1) <= MACHINE_NOISE:
        return f"machine speed {m:.2f}x of baseline's (within noise, not normalised)"
    if abs(math.log(m)) > math.log(1 + MACHINE_MAX_DRIFT):
        return f"machine speed {m:.2f}x of baseline's (too different to normalise: inconclusive)"
    return f"machine speed {m:.2f}x of baseline's (times normalised by it)"


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
