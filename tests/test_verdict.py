"""verdict.py with synthetic samples: when a stage regresses, improves, or is left alone.

No clock anywhere: every sample is made up, so every verdict here is exact and repeatable.
"""
from __future__ import annotations

import numpy as np
import pytest

from pytest_llmcycle.engine import verdict as vd


def samples(median: float, n: int = 60, spread: float = 0.02, seed: int = 0) -> list[float]:
    """``n`` times around ``median`` with a small deterministic jitter (non-degenerate ranks)."""
    rng = np.random.default_rng(seed)
    return list(median * (1 + rng.uniform(-spread, spread, n)))


BASE = samples(10.0, seed=1)


# ----------------------------------------------------------------------------- one stage


def test_a_stage_without_baseline_is_new_and_says_how_to_record_one():
    v = vd.judge(None, samples(10.0), 0.10)
    assert v.outcome == vd.NEW
    assert "--llmcycle-update" in v.reason
    assert not v.failed


def test_an_unchanged_stage_is_ok():
    v = vd.judge(BASE, samples(10.0, seed=2), 0.10)
    assert v.outcome == vd.OK
    assert abs(v.change) < 0.02
    assert v.reason == "within 10.0%"
    assert not v.failed


def test_a_significant_slowdown_beyond_the_threshold_regresses():
    v = vd.judge(BASE, samples(13.0, seed=2), 0.10)
    assert v.outcome == vd.REGRESSED
    assert v.failed
    assert v.change == pytest.approx(0.30, abs=0.02)
    assert v.ci[0] > 1.0
    assert v.p_value < 1e-6 and v.confidence > 0.999
    assert v.effective_threshold == 0.10
    assert "slower than baseline" in v.reason


def test_a_significant_slowdown_below_the_threshold_is_ok():
    # +5 % and overwhelmingly significant, yet the user allowed 10 %
    v = vd.judge(BASE, samples(10.5, seed=2), 0.10)
    assert v.outcome == vd.OK
    assert v.p_value < 1e-6


def test_the_same_slowdown_regresses_under_a_tighter_threshold():
    assert vd.judge(BASE, samples(10.5, seed=2), 0.03).outcome == vd.REGRESSED


def test_a_slowdown_beyond_the_threshold_without_significance_is_inconclusive():
    # four samples each, fully separated: Mann-Whitney p = 0.015, not below alpha = 0.01
    v = vd.judge([10.0, 10.1, 10.2, 10.3], [13.0, 13.1, 13.2, 13.3], 0.10, alpha=0.01)
    assert v.change > 0.25
    assert v.outcome == vd.INCONCLUSIVE
    assert "not significant" in v.reason
    assert v.p_value == pytest.approx(0.0152, abs=1e-4)
    # the same samples are significant at a laxer alpha
    assert vd.judge([10.0, 10.1, 10.2, 10.3], [13.0, 13.1, 13.2, 13.3], 0.10, alpha=0.05).outcome == vd.REGRESSED


def test_a_significant_speedup_is_improved_and_suggests_an_update():
    v = vd.judge(BASE, samples(7.0, seed=2), 0.10)
    assert v.outcome == vd.IMPROVED
    assert not v.failed
    assert v.change == pytest.approx(-0.30, abs=0.02)
    assert v.ci[1] < 1.0
    assert "--llmcycle-update" in v.reason


def test_noise_wider_than_the_threshold_raises_the_effective_threshold_and_says_so():
    rng = np.random.default_rng(3)
    wide_base = list(10 * rng.uniform(0.5, 1.5, 64))
    wide_cur = list(10 * rng.uniform(0.5, 1.5, 64) * 1.5)
    v = vd.judge(wide_base, wide_cur, 0.10)
    assert v.effective_threshold > 0.15
    assert v.effective_threshold == pytest.approx((v.ci[1] - v.ci[0]) / 2 / v.ratio)
    assert "is wider than the 10% threshold" in v.reason
    assert f"gated at {v.effective_threshold * 100:.1f}%" in v.reason


def test_a_fractional_threshold_is_shown_as_given():
    rng = np.random.default_rng(3)
    v = vd.judge(list(10 * rng.uniform(0.5, 1.5, 64)), list(10 * rng.uniform(0.5, 1.5, 64) * 1.5), 0.025)
    assert "is wider than the 2.5% threshold" in v.reason


def test_a_noisy_stage_is_not_failed_for_a_change_inside_its_noise():
    rng = np.random.default_rng(4)
    wide_base = list(10 * rng.uniform(0.5, 1.5, 64))
    wide_cur = list(10 * rng.uniform(0.5, 1.5, 64) * 1.12)  # +12 %: beyond 10 %, inside the noise
    v = vd.judge(wide_base, wide_cur, 0.10)
    assert v.effective_threshold > v.threshold
    assert v.outcome != vd.REGRESSED


def test_a_baseline_from_another_environment_is_not_comparable():
    why = vd.env_mismatch({"threads": 4, "torch": "2.3.0"}, {"threads": 2, "torch": "2.3.0"})
    v = vd.judge(BASE, samples(20.0), 0.10, not_comparable=why)
    assert v.outcome == vd.NOT_COMPARABLE
    assert not v.failed
    assert "threads 4 -> 2" in v.reason and "--llmcycle-update" in v.reason


# ----------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    "field, old, new",
    [("threads", 4, 1), ("torch", "2.3.0", "2.4.0"), ("transformers", "4.40.0", "4.41.0"), ("dtype", "float32", "bfloat16")],
)
def test_each_compared_environment_field_makes_a_mismatch(field, old, new):
    why = vd.env_mismatch({field: old}, {field: new})
    assert why is not None and f"{field} {old} -> {new}" in why


def test_the_device_name_and_absent_fields_do_not_make_a_mismatch():
    assert vd.env_mismatch({"threads": 2, "device_name": "A"}, {"threads": 2, "device_name": "B"}) is None
    assert vd.env_mismatch({"threads": 2, "torch": "2.3"}, {"threads": 2}) is None
    assert vd.env_mismatch({}, {"threads": 2}) is None


def test_thread_counts_compare_as_text_so_a_json_roundtrip_matches():
    assert vd.env_mismatch({"threads": "2"}, {"threads": 2}) is None


# ----------------------------------------------------------------------------- re-measure


def remeasure_then_confirm(baseline, first_samples, second_samples, threshold=0.10):
    """What the fixture does: judge, and only if that regressed, re-measure and combine."""
    first = vd.judge(baseline, first_samples, threshold)
    if first.outcome != vd.REGRESSED:
        return first, False
    calls = []

    def fake_remeasure():
        calls.append(1)
        return second_samples

    return vd.confirm(first, vd.judge(baseline, fake_remeasure(), threshold)), bool(calls)


def test_a_regression_that_the_re_measure_repeats_is_confirmed():
    v, remeasured = remeasure_then_confirm(BASE, samples(13.0, seed=2), samples(12.8, seed=3))
    assert remeasured
    assert v.outcome == vd.REGRESSED
    assert v.first_ratio == pytest.approx(1.30, abs=0.02)
    assert v.ratio == pytest.approx(1.28, abs=0.02)  # the re-measure's numbers are reported
    assert "confirmed by a re-measure (first +" in v.reason


def test_a_regression_that_the_re_measure_does_not_repeat_is_inconclusive():
    v, remeasured = remeasure_then_confirm(BASE, samples(13.0, seed=2), samples(10.0, seed=3))
    assert remeasured
    assert v.outcome == vd.INCONCLUSIVE
    assert not v.failed
    assert v.first_ratio == pytest.approx(1.30, abs=0.02)
    assert "not confirmed, not gated" in v.reason


def test_a_re_measure_that_is_only_a_little_slower_does_not_confirm():
    # second run +5 %: below the threshold, so the first +30 % was a fluke
    v, _ = remeasure_then_confirm(BASE, samples(13.0, seed=2), samples(10.5, seed=3))
    assert v.outcome == vd.INCONCLUSIVE


def test_an_ok_stage_is_never_re_measured():
    v, remeasured = remeasure_then_confirm(BASE, samples(10.1, seed=2), samples(99.0, seed=3))
    assert not remeasured
    assert v.outcome == vd.OK


# ----------------------------------------------------------------------------- machine speed


def test_a_machine_slower_by_the_same_factor_is_normalised_away():
    v = vd.judge(BASE, samples(12.5, seed=2), 0.10, machine_factor=1.25)
    assert v.outcome == vd.OK
    assert v.normalised
    assert abs(v.change) < 0.02
    assert "normalised" in vd.machine_note(1.25)


def test_code_slower_than_the_machine_still_regresses_after_normalising():
    v = vd.judge(BASE, samples(16.0, seed=2), 0.10, machine_factor=1.25)
    assert v.outcome == vd.REGRESSED
    assert v.normalised
    assert v.change == pytest.approx(16.0 / 12.5 - 1, abs=0.02)


def test_a_machine_drift_within_noise_is_not_normalised():
    v = vd.judge(BASE, samples(13.0, seed=2), 0.10, machine_factor=1.03)
    assert v.outcome == vd.REGRESSED
    assert not v.normalised
    assert "within noise" in vd.machine_note(1.03)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_machine_far_off_its_baseline_speed_makes_a_change_inconclusive(factor):
    v = vd.judge(BASE, samples(10.0 * factor, seed=2), 0.10, machine_factor=factor)
    assert v.outcome == vd.INCONCLUSIVE
    assert not v.normalised
    assert "too different to normalise" in v.reason


def test_a_machine_far_off_does_not_disturb_an_unchanged_stage():
    assert vd.judge(BASE, samples(10.0, seed=2), 0.10, machine_factor=2.0).outcome == vd.OK


# ----------------------------------------------------------------------------- cycle total


def test_the_cycle_regresses_when_its_total_does():
    fwd, tok = samples(10.0, seed=4), samples(1.0, seed=5)
    v = vd.judge_cycle([fwd, tok], [samples(10.0, seed=6), samples(1.5, seed=7)], [1.0, 20.0], 0.10)
    # T = 10 + 20*1 = 30 ms -> 10 + 20*1.5 = 40 ms
    assert v.ratio == pytest.approx(40 / 30, rel=0.02)
    assert v.outcome == vd.REGRESSED
    assert "cycle +" in v.reason


def test_a_stage_left_out_of_the_cycle_weight_does_not_move_it():
    fwd, tok = samples(10.0, seed=4), samples(1.0, seed=5)
    v = vd.judge_cycle([fwd, tok], [samples(10.0, seed=6), samples(5.0, seed=7)], [1.0, 0.0], 0.10)
    assert v.outcome == vd.OK


def test_the_cycle_improves_when_its_total_does():
    fwd, tok = samples(10.0, seed=4), samples(1.0, seed=5)
    v = vd.judge_cycle([fwd, tok], [samples(6.0, seed=6), samples(1.0, seed=7)], [1.0, 1.0], 0.10)
    assert v.outcome == vd.IMPROVED


def test_the_cycle_is_normalised_by_the_machine_factor_like_its_stages():
    base = [samples(10.0, seed=4), samples(5.0, seed=5)]
    cur = [samples(12.5, seed=6), samples(6.25, seed=7)]
    v = vd.judge_cycle(base, cur, [1.0, 1.0], 0.10, machine_factor=1.25)
    assert v.outcome == vd.OK and v.normalised


def test_the_cycle_of_a_machine_far_off_is_inconclusive_like_its_stages():
    # each stage says "inconclusive" here; the cycle total must not fail the test instead
    base = [samples(10.0, seed=4), samples(5.0, seed=5)]
    cur = [samples(20.0, seed=6), samples(10.0, seed=7)]
    stages = [vd.judge(b, c, 0.10, machine_factor=2.0) for b, c in zip(base, cur)]
    assert [s.outcome for s in stages] == [vd.INCONCLUSIVE, vd.INCONCLUSIVE]
    v = vd.judge_cycle(base, cur, [1.0, 1.0], 0.10, machine_factor=2.0)
    assert v.outcome == vd.INCONCLUSIVE
    assert not v.failed
    assert "too different to normalise" in v.reason


def test_outcomes_are_ordered_worst_first_for_reports():
    assert vd.OUTCOMES[0] == vd.REGRESSED
    assert vd.OUTCOMES[-1] == vd.OK


# ----------------------------------------------------------------------------- several recording processes


def two_process_baseline() -> tuple[list[float], tuple[float, float]]:
    """A baseline pooled from a process at 10 ms and one at 12 ms (a per-process performance mode)."""
    pooled = samples(10.0, n=32, seed=21) + samples(12.0, n=32, seed=22)
    median = float(np.median(pooled))
    return pooled, (10.0 / median, 12.0 / median)


def test_a_stage_in_the_slower_recorded_mode_passes_only_with_the_process_range():
    base, spread = two_process_baseline()
    slow_mode = samples(12.3, seed=23)  # +2.5 % on the slower process, ~+12 % on the pooled median
    assert vd.judge(base, slow_mode, 0.10).outcome == vd.REGRESSED  # what one pooled baseline alone says
    v = vd.judge(base, slow_mode, 0.10, process_range=spread)
    assert v.outcome == vd.OK
    assert v.effective_threshold == pytest.approx(spread[1] * 1.10 - 1)
    assert "several processes" in v.reason and "slowest process + the threshold" in v.reason


def test_past_the_slowest_recorded_process_by_the_threshold_is_a_regression():
    base, spread = two_process_baseline()
    v = vd.judge(base, samples(12.0 * 1.16, seed=24), 0.10, process_range=spread)
    assert v.outcome == vd.REGRESSED and v.failed
    assert "slower than baseline" in v.reason and "gated at" in v.reason


def test_improved_means_faster_than_the_fastest_recorded_process():
    base, spread = two_process_baseline()
    assert vd.judge(base, samples(9.6, seed=25), 0.10, process_range=spread).outcome == vd.OK  # fast mode, a bit lucky
    assert vd.judge(base, samples(10.0 / 1.2, seed=26), 0.10, process_range=spread).outcome == vd.IMPROVED


def test_a_narrow_process_range_changes_nothing():
    base = samples(10.0, seed=27)
    cur = samples(11.5, seed=28)
    plain, spread = vd.judge(base, cur, 0.10), vd.judge(base, cur, 0.10, process_range=(0.99, 1.0))
    assert (plain.outcome, plain.effective_threshold, plain.reason) == (spread.outcome, spread.effective_threshold, spread.reason)


def test_the_cycle_is_gated_by_its_process_range_too():
    base, spread = two_process_baseline()
    cur = samples(12.3, seed=29)
    assert vd.judge_cycle([base, base], [cur, cur], [1.0, 1.0], 0.10).outcome == vd.REGRESSED
    assert vd.judge_cycle([base, base], [cur, cur], [1.0, 1.0], 0.10, process_range=spread).outcome == vd.OK
