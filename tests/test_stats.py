"""stats.py with synthetic samples: estimators, the rank test and the bootstrap ratio."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmcycle.engine import stats


def brute_u(x, y):
    """U statistic of x by counting pairs (ties count one half): independent of the rank code."""
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y)


def asymptotic_p_greater(x, y):
    """Textbook normal approximation with tie and continuity corrections, written out longhand."""
    nx, ny = len(x), len(y)
    n = nx + ny
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    tie = float(((counts**3) - counts).sum()) / (n * (n - 1))
    sd = math.sqrt(nx * ny / 12.0 * ((n + 1) - tie))
    z = (brute_u(x, y) - nx * ny / 2.0 - 0.5) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


# ----------------------------------------------------------------------------- summaries


def test_summary_of_a_known_sample():
    s = stats.summarize([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert (s.median, s.q1, s.q3, s.n) == (5, 3, 7, 9)
    assert s.iqr == 4
    assert s.rel_iqr == pytest.approx(0.8)


def test_summary_of_an_empty_sample_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        stats.summarize([])


def test_rel_iqr_of_a_zero_median_is_infinite_not_a_crash():
    assert stats.summarize([0.0, 0.0, 0.0]).rel_iqr == math.inf


def test_thin_keeps_real_order_statistics_including_the_extremes():
    x = list(range(1000, 0, -1))
    t = stats.thin(x, 64)
    assert len(t) == 64
    assert t == sorted(t)
    assert t[0] == 1 and t[-1] == 1000
    assert set(t) <= set(x)  # real samples, not interpolated quantiles


def test_thin_of_a_small_sample_returns_it_sorted():
    assert stats.thin([3.0, 1.0, 2.0], 64) == [1.0, 2.0, 3.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 1e6), min_size=1, max_size=400), st.integers(2, 100))
def test_thin_never_exceeds_k_and_keeps_min_and_max(xs, k):
    t = stats.thin(xs, k)
    assert len(t) == min(k, len(xs))
    assert t[0] == min(xs) and t[-1] == max(xs)


def test_median_ci_halfwidth_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    small = rng.normal(100, 5, 30)
    large = rng.normal(100, 5, 3000)
    assert stats.median_ci_halfwidth(large) < stats.median_ci_halfwidth(small) / 3


def test_median_ci_halfwidth_of_a_constant_sample_is_zero():
    assert stats.median_ci_halfwidth([5.0] * 50) == 0.0


def test_median_ci_halfwidth_needs_three_samples():
    assert stats.median_ci_halfwidth([1.0, 2.0]) == math.inf


def test_z_matches_the_normal_quantiles():
    assert stats._z(0.95) == pytest.approx(1.959964, abs=1e-5)
    assert stats._z(0.99) == pytest.approx(2.575829, abs=1e-5)


# ----------------------------------------------------------------------------- Mann-Whitney U


def test_mann_whitney_of_separated_samples():
    # scipy.stats.mannwhitneyu(..., method="asymptotic") gives 0.006092 and 0.996692 here
    lo, hi = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    assert stats.mann_whitney_greater(hi, lo) == pytest.approx(0.006092, abs=2e-6)
    assert stats.mann_whitney_greater(lo, hi) == pytest.approx(0.996692, abs=2e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=2, max_size=30),
    st.lists(st.integers(1, 12), min_size=2, max_size=30),
)
def test_mann_whitney_matches_the_longhand_formula_with_ties(x, y):
    xs, ys = np.array(x, float), np.array(y, float)
    if len(set(x) | set(y)) == 1:
        assert stats.mann_whitney_greater(xs, ys) == 0.5  # no variance: no evidence either way
        return
    assert stats.mann_whitney_greater(xs, ys) == pytest.approx(asymptotic_p_greater(xs, ys), rel=1e-9, abs=1e-12)


def test_mann_whitney_of_an_empty_side_gives_no_evidence():
    assert stats.mann_whitney_greater([], [1.0, 2.0]) == 1.0


def test_mann_whitney_p_values_of_both_directions_are_about_complementary():
    rng = np.random.default_rng(7)
    x, y = rng.normal(10, 1, 40), rng.normal(10.3, 1, 40)
    p1, p2 = stats.mann_whitney_greater(x, y), stats.mann_whitney_greater(y, x)
    assert 0.95 < p1 + p2 < 1.1  # continuity correction makes the sum slightly above 1


# ----------------------------------------------------------------------------- bootstrap ratio


def jittered(median, n=60, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return list(median * (1 + rng.uniform(-spread, spread, n)))


def test_ratio_ci_brackets_a_clear_slowdown():
    base, cur = jittered(10.0, seed=1), jittered(13.0, seed=2)
    est = stats.ratio_ci([base], [cur])
    assert est.ratio == pytest.approx(float(np.median(cur)) / float(np.median(base)))
    assert 1.0 < est.lo < est.ratio < est.hi
    assert est.p_slower == pytest.approx(1 / stats.N_BOOTSTRAP)  # floored, never exactly 0
    assert est.p_faster == 1.0


def test_ratio_ci_is_deterministic_for_the_same_samples():
    base, cur = jittered(10.0, seed=3), jittered(10.5, seed=4)
    assert stats.ratio_ci([base], [cur]) == stats.ratio_ci([base], [cur])


def test_ratio_ci_of_identical_samples_is_centred_on_one():
    base = jittered(5.0, seed=5)
    est = stats.ratio_ci([base], [list(base)])
    assert est.ratio == 1.0
    assert est.lo < 1.0 < est.hi


def test_ratio_ci_of_several_stages_is_the_ratio_of_weighted_totals():
    fwd_b, fwd_c = jittered(10.0, seed=6), jittered(10.0, seed=7)
    tok_b, tok_c = jittered(1.0, seed=8), jittered(2.0, seed=9)
    est = stats.ratio_ci([fwd_b, tok_b], [fwd_c, tok_c], weights=[1.0, 10.0])
    expected = (np.median(fwd_c) + 10 * np.median(tok_c)) / (np.median(fwd_b) + 10 * np.median(tok_b))
    assert est.ratio == pytest.approx(expected)
    assert est.lo < expected < est.hi
    assert est.ratio == pytest.approx(30 / 20, rel=0.03)


def test_bootstrap_of_a_huge_sample_is_centred():
    rng = np.random.default_rng(0)
    big = rng.normal(100, 1, 50_000)
    meds = stats.bootstrap_medians(big, np.random.default_rng(1), n_boot=200)
    assert meds.shape == (200,)
    assert abs(float(np.median(meds)) - 100) < 0.5


@pytest.mark.parametrize("n", [2, 7, 8, 61, 200])
def test_bootstrap_medians_draw_the_law_of_resampled_medians(n):
    """The O(n_boot) order-statistic draw has the distribution of "resample n, take the median"."""
    x = np.random.default_rng(n).lognormal(0.0, 0.3, n)
    draws = 20_000
    brute = np.median(x[np.random.default_rng(1).integers(0, n, size=(draws, n))], axis=1)
    exact = stats.bootstrap_medians(x, np.random.default_rng(2), n_boot=draws)
    # every value either can produce is a mid-point of two order statistics; compare their CDFs
    grid = np.union1d(brute, exact)
    cdf_brute = np.searchsorted(np.sort(brute), grid, side="right") / draws
    cdf_exact = np.searchsorted(np.sort(exact), grid, side="right") / draws
    ks = float(np.abs(cdf_brute - cdf_exact).max())
    assert ks < 1.95 * np.sqrt(2 / draws)  # two-sample KS at alpha ~0.001: same law
    xs = np.sort(x)
    support = xs if n % 2 else 0.5 * (xs[:, None] + xs[None, :])  # a value, or a mid-point of two
    assert np.isin(exact, support).all()


def test_bootstrap_medians_of_one_sample_and_of_none():
    assert stats.bootstrap_medians([3.0], np.random.default_rng(0), n_boot=5).tolist() == [3.0] * 5
    with pytest.raises(ValueError):
        stats.bootstrap_medians([], np.random.default_rng(0))


@pytest.mark.parametrize("q", [0.0, 0.005, 0.025, 0.3, 0.5, 0.975, 0.995, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 2000])
def test_quantile_of_sorted_is_numpys_linear_quantile(q, n):
    x = np.sort(np.random.default_rng(n).lognormal(0, 1, n))
    assert stats.quantile_of_sorted(x, q) == float(np.quantile(x, q))


def test_ratio_ci_reuses_its_draws_and_gets_what_fresh_draws_give():
    """The cached resample indices are the ones a fresh seeded generator draws: same interval."""
    base, cur = jittered(10.0, n=64, seed=11), jittered(10.8, n=200, seed=12)
    first = stats.ratio_ci([base], [cur], seed=3)
    rng = np.random.default_rng(3)
    boot_b = stats.bootstrap_medians(base, rng)
    boot_c = stats.bootstrap_medians(cur, rng)  # the same stream, in ratio_ci's order
    ratios = np.sort(boot_c / boot_b)
    assert (first.lo, first.hi) == (stats.quantile_of_sorted(ratios, 0.025), stats.quantile_of_sorted(ratios, 0.975))
    other = stats.ratio_ci([jittered(5.0, n=64, seed=13)], [jittered(5.0, n=200, seed=14)], seed=3)
    assert stats.ratio_ci([base], [cur], seed=3) == first  # a second call, from the cache
    assert other != first
