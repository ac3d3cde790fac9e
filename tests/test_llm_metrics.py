"""Pure cores of the LLM helpers, on synthetic numbers: token metrics, scaling fits, A/B, counters."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_llmcycle.engine import counts
from pytest_llmcycle.measure import counters as cnt
from pytest_llmcycle.llm.ab import ABResult, SpeedupError, speedup
from pytest_llmcycle.llm.decode import by_position, token_call, token_stats
from pytest_llmcycle.llm.scaling import ScalingError, ScalingResult, fit_power_law
from pytest_llmcycle.measure.steps import Marks

MS = 1e6


# ----------------------------------------------------------------------------- token metrics


def test_ttft_tpot_and_gaps_follow_their_definitions():
    # first logits at 5 ms, then tokens at 6, 8, 9 ms; the call returns at 10 ms
    c = token_call(Marks((5 * MS, 6 * MS, 8 * MS, 9 * MS), 10 * MS))
    assert c.ttft_ns == 5 * MS
    assert c.gaps_ns == (1 * MS, 2 * MS, 1 * MS)
    assert c.n_tokens == 4
    assert c.tpot_ns == pytest.approx((9 - 5) * MS / 3)  # (t_last - t_first) / (N - 1)
    assert c.e2e_ns == 10 * MS


def test_token_stats_medians_percentiles_and_throughput():
    calls = [token_call(Marks((5 * MS, 6 * MS, 8 * MS, 9 * MS), 10 * MS)), token_call(Marks((7 * MS, 8 * MS, 9 * MS, 10 * MS), 12 * MS))]
    s = token_stats(calls, batch=2)
    assert s.n_tokens == 4 and s.calls == 2
    assert s.ttft_ms == pytest.approx(6.0)
    assert s.e2e_ms == pytest.approx(11.0)
    gaps = [1, 2, 1, 1, 1, 1]
    for q in (50, 90, 99):
        assert s.itl_ms[q] == pytest.approx(float(np.percentile(gaps, q)))
    assert s.tpot_ms == pytest.approx(float(np.median([4 / 3, 1.0])))
    assert s.tokens_per_s == pytest.approx(2 * 4 / 0.011)  # B * N / end-to-end
    assert "TTFT 6 ms" in s.table() and "p99" in s.table()


def test_a_single_token_has_no_decode_metrics():
    s = token_stats([token_call(Marks((3 * MS,), 4 * MS))])
    assert s.tpot_ms is None and s.itl_ms == {}
    assert "n/a" in s.table()


def test_calls_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="pin the output length"):
        token_stats([token_call(Marks((1.0, 2.0), 3.0)), token_call(Marks((1.0, 2.0, 3.0), 4.0))])


def test_gaps_grouped_by_context_length():
    calls = [token_call(Marks((1.0, 2.0, 4.0), 5.0)), token_call(Marks((1.0, 3.0, 4.0), 5.0))]
    positions, groups = by_position(calls, first_position=10)
    assert positions == [11, 12]
    assert groups == [[1.0, 2.0], [2.0, 1.0]]


# ----------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("true_exponent", [0.0, 1.0, 2.0])
def test_power_law_exponent_recovered_with_an_interval_that_covers_it(true_exponent):
    rng = np.random.default_rng(1)
    sizes = [16, 32, 64, 128, 256]
    samples = [list(0.01 * n**true_exponent * rng.lognormal(0, 0.05, 40)) for n in sizes]
    f = fit_power_law(sizes, samples)
    assert f.lo <= true_exponent <= f.hi
    assert abs(f.exponent - true_exponent) < 0.05
    assert f.hi - f.lo < 0.2


def test_counter_fit_is_exact_and_has_no_width():
    f = fit_power_law([8, 16, 32], [[3 * 8**2], [3 * 16**2], [3 * 32**2]], what="flops", unit="count")
    assert f.exponent == pytest.approx(2.0)
    assert f.lo == f.hi == pytest.approx(2.0)
    assert f.local_exponents == pytest.approx((2.0, 2.0))


def test_scaling_failure_shows_exponent_and_table():
    r = ScalingResult("prefill", (16.0, 32.0, 64.0), ((1.0,), (8.0,), (64.0,)))
    with pytest.raises(ScalingError) as e:
        r.assert_exponent(at_most=2.0)
    msg = str(e.value)
    assert "size^3.00" in msg and "grows faster than size^2" in msg
    for n in ("16", "32", "64"):
        assert n in msg
    assert "local exponent" in msg
    r.assert_exponent(at_most=3.5, at_least=2.5)  # within bounds: passes
    with pytest.raises(ScalingError, match="grows slower"):
        r.assert_exponent(at_least=4.0)


def test_noisy_fit_that_straddles_the_bound_passes():
    rng = np.random.default_rng(3)
    sizes = [10, 20]
    samples = [list(rng.lognormal(0, 0.5, 8)), list(2 ** 0.1 * rng.lognormal(0, 0.5, 8))]
    f = fit_power_law(sizes, samples)
    assert f.lo < 0 < f.hi  # too noisy to tell
    f.check(at_most=0.0)  # not surely above the bound: no failure


def test_scaling_fit_refuses_bad_input():
    with pytest.raises(ValueError, match="two different sizes"):
        fit_power_law([4, 4], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([4, 8], [[1.0], [0.0]])
    with pytest.raises(KeyError, match="flops"):
        ScalingResult("x", (1.0, 2.0), ((1.0,), (2.0,))).fit("flops")


# ----------------------------------------------------------------------------- A/B


def test_speedup_is_the_median_block_ratio_with_interval():
    rng = np.random.default_rng(0)
    a = list(2.0 * rng.lognormal(0, 0.02, 60))
    b = list(1.0 * rng.lognormal(0, 0.02, 60))
    s = speedup(a, b)
    q = [x / y for x, y in zip(a, b)]
    blocks = sorted(float(np.sqrt(q[2 * j] * q[2 * j + 1])) for j in range(30))
    assert s.ratio == pytest.approx((blocks[14] + blocks[15]) / 2)
    assert s.blocks == 30 and s.lo < s.ratio < s.hi
    assert 1.9 < s.lo and s.hi < 2.1


def test_assert_faster_passes_only_on_evidence():
    rng = np.random.default_rng(0)
    r = ABResult("fp32", "bf16", tuple(2.0 * rng.lognormal(0, 0.02, 60)), tuple(rng.lognormal(0, 0.02, 60)))
    r.assert_faster(1.3)
    with pytest.raises(SpeedupError) as e:
        r.assert_faster(3.0)
    assert "bf16 is not shown to be 3x faster than fp32" in str(e.value)
    assert "speedup" in str(e.value) and "95% CI" in str(e.value)
    # the claim sits inside the interval: not shown (the default), not refuted either (strict=False)
    lo, hi = r.ci
    mid = (lo + hi) / 2
    r.assert_faster(mid, strict=False)
    with pytest.raises(SpeedupError, match="not shown"):
        r.assert_faster(mid)


# ----------------------------------------------------------------------------- counters


def test_counters_compare_exactly_and_peak_with_tolerance():
    base = {"flops": 1000, "aten_ops": 205, "alloc_bytes": 4096, "peak_bytes": 1_000_000}
    assert counts.compare(base, dict(base)) == []
    assert counts.compare(base, dict(base, peak_bytes=1_010_000)) == []  # within 2 %
    changes = counts.compare(base, dict(base, flops=5000, aten_ops=204, peak_bytes=2_000_000))
    assert [c.name for c in changes] == ["flops", "aten_ops", "peak_bytes"]
    assert [c.name for c in counts.regressions(base, dict(base, flops=5000, aten_ops=204))] == ["flops"]
    assert counts.compare(base, dict(base, aten_ops=206))[0].ratio == pytest.approx(206 / 205)


def test_counters_missing_on_either_side_are_not_compared():
    assert counts.compare({}, {"flops": 1}) == []
    assert counts.compare({"flops": 1}, None) == []
    assert counts.compare({"flops": 1}, {"aten_ops": 3}) == []


def test_counter_failure_lines_name_counter_baseline_and_current():
    lines = counts.counter_lines({"flops": 720896, "aten_ops": 205}, {"flops": 19594240, "aten_ops": 205}, unit="token")
    assert len(lines) == 1
    line = lines[0]
    assert "flops per token" in line
    assert "baseline 720.9 kFLOP" in line and "current 19.59 MFLOP" in line
    assert "27.2x" in line and "no re-measure" in line


def test_counter_delta_per_token_keeps_integers_and_peaks():
    a = {"flops": 100, "aten_ops": 10, "alloc_bytes": 0, "peak_bytes": 50}
    b = {"flops": 700, "aten_ops": 40, "alloc_bytes": 90, "peak_bytes": 70}
    d = cnt.delta(a, b, per=3)
    assert d == {"flops": 200, "aten_ops": 10, "alloc_bytes": 30, "peak_bytes": 70}
    assert isinstance(d["flops"], int)
    assert cnt.delta(a, b, per=4)["aten_ops"] == 7.5


def test_counter_formatting():
    assert counts.fmt_count("alloc_bytes", 3 * 2**20) == "3 MiB"
    assert counts.fmt_count("flops", 2.5e9) == "2.5 GFLOP"
    assert counts.fmt_count("aten_ops", 205) == "205"
    assert counts.fmt_count("peak_bytes", None) == "n/a"
    assert math.isinf(counts.CounterChange("flops", 0, 5).ratio)
