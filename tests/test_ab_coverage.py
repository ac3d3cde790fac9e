"""llm/ab.py: the A/B interval contains the true speedup at its stated rate, and assert_faster
passes only on evidence.

Synthetic rounds with a known speedup, drawn the way ``run_ab`` takes them (round i: A then B
when i is even, B then A when odd), under the noise a shared machine adds: per-call noise,
a busy neighbour switching the machine between a fast and a slow mode for runs of rounds, a
per-process speed mode, an order effect (the second call of a round runs faster), rare
interrupts. Seeded: every figure here is the same on every run.
"""
from __future__ import annotations

import numpy as np
import pytest

from pytest_llmcycle.engine import stats
from pytest_llmcycle.llm.ab import CONFIDENCE, ABResult, SpeedupError, block_ratios, sign_interval_rank, speedup

TRIALS = 300


def rounds(rng, ratio: float, n: int, scenario: str, coin: bool = True):
    """(a, b) per-call times of ``n`` rounds, B ``ratio`` times faster than A.

    Rounds come in blocks of two, A B + B A or B A + A B by a coin as ``run_ab`` takes them
    (``coin=False``: always A B + B A, the strict alternation used before). The machine's
    factor depends on the call's position in time, whichever path runs there.
    """
    calls = 2 * n
    pos = np.arange(calls)
    if scenario == "modes":  # a busy neighbour: runs of 8 calls at 1.8x, which can start mid-round
        factor = np.repeat(np.where(rng.random(calls // 8 + 1) < 0.4, 1.8, 1.0), 8)[:calls]
    elif scenario == "periodic":  # a neighbour waking every 4th call
        factor = np.where(pos % 4 == 0, 1.5, 1.0)
    elif scenario == "order":  # the second call of a round runs 8 % faster (warm caches)
        factor = np.where(pos % 2 == 1, 0.92, 1.0)
    elif scenario == "contention":  # a neighbour takes the core at random: half the calls take 2x
        factor = np.where(rng.random(calls) < 0.5, 2.0, 1.0)
    elif scenario == "interrupts":  # 3 % of calls take 3x
        factor = np.where(rng.random(calls) < 0.03, 3.0, 1.0)
    else:
        factor = np.ones(calls)
    a_first_block = rng.random(n // 2 + 1) < 0.5 if coin else np.ones(n // 2 + 1, dtype=bool)
    a_first = np.empty(n, dtype=bool)
    a_first[0::2] = a_first_block[: len(a_first[0::2])]
    a_first[1::2] = ~a_first_block[: len(a_first[1::2])]
    first, second = 2 * np.arange(n), 2 * np.arange(n) + 1
    a_pos = np.where(a_first, first, second)
    b_pos = np.where(a_first, second, first)
    base = 20.0 * rng.lognormal(0.0, 0.3)  # per-process speed mode: each trial is one process
    a = base * rng.lognormal(0.0, 0.04, n) * factor[a_pos]
    b = base / ratio * rng.lognormal(0.0, 0.04, n) * factor[b_pos]
    return a, b


def pooled_bootstrap(a, b):
    """The interval before issue 14: pooled medians, each side bootstrapped on its own."""
    est = stats.ratio_ci([list(b)], [list(a)])
    return est.lo, est.hi


def coverage(ratio: float, scenario: str, n: int = 40, before: bool = False, seed: int = 3) -> float:
    """Share of TRIALS intervals holding ``ratio``: ``run_ab``'s (coin, sign test over blocks), or
    with ``before`` the old design's (strict alternation, pooled bootstrap)."""
    rng = np.random.default_rng(seed)
    hit = 0
    for _ in range(TRIALS):
        a, b = rounds(rng, ratio, n, scenario, coin=not before)
        if before:
            lo, hi = pooled_bootstrap(a, b)
        else:
            s = speedup(a, b)
            lo, hi = s.lo, s.hi
        hit += lo <= ratio <= hi
    return hit / TRIALS


SCENARIOS = ["iid", "modes", "periodic", "order", "contention", "interrupts"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_the_interval_holds_the_true_speedup_at_its_stated_rate(scenario, ratio):
    # sign-test intervals are conservative: at least 95 %; 300 trials read it within ~2.5 %
    assert coverage(ratio, scenario) >= CONFIDENCE - 0.03


def test_the_design_it_replaces_under_covers_when_something_periodic_lines_up_with_one_path():
    # strict alternation puts A at a block's first and last call every time; a neighbour waking
    # every 4th call then always hits A, and the pooled interval rarely holds the true speedup
    assert coverage(1.0, "periodic", before=True) < 0.5
    assert coverage(1.0, "iid", before=True) >= CONFIDENCE - 0.03  # on i.i.d. noise it was fine


def test_blocks_pair_an_a_first_round_with_a_b_first_round():
    a = [2.0, 4.0, 2.0, 4.0, 9.0]
    b = [1.0, 1.0, 2.0, 2.0, 1.0]  # the fifth round has no partner and is left out
    assert block_ratios(a, b) == [pytest.approx(np.sqrt(2.0 * 4.0)), pytest.approx(np.sqrt(1.0 * 2.0))]


def test_sign_interval_ranks_have_their_exact_coverage():
    assert sign_interval_rank(5) == (0, pytest.approx(1 - 2 / 32))  # too few blocks for 95 %: the range, 93.75 %
    assert sign_interval_rank(6) == (0, pytest.approx(1 - 2 / 64))
    k, cover = sign_interval_rank(25)
    # P(Bin(25, 1/2) <= 7) = 0.0216, <= 8 = 0.0539: rank 7 is the widest that keeps 95 %
    assert (k, cover) == (7, pytest.approx(1 - 2 * 0.021643, abs=1e-5))


def test_few_blocks_say_their_coverage():
    r = ABResult("a", "b", (2.0, 2.1, 2.0, 2.2), (1.0, 1.0, 1.1, 1.0))
    assert r.estimate.blocks == 2 and r.estimate.coverage == 0.5
    assert "50% CI, too few blocks for 95%" in r.describe()


def ab_result(ratio: float, n: int = 40, seed: int = 0) -> ABResult:
    a, b = rounds(np.random.default_rng(seed), ratio, n, "iid")
    return ABResult("fp32", "bf16", tuple(a), tuple(b))


def test_assert_faster_passes_only_when_the_lower_end_reaches_the_claim():
    r = ab_result(1.5)
    lo, hi = r.ci
    assert lo < 1.5 < hi
    r.assert_faster(lo)
    with pytest.raises(SpeedupError) as e:
        r.assert_faster(1.5)  # inside the interval: not shown
    msg = str(e.value)
    assert "bf16 is not shown to be 1.5x faster than fp32" in msg
    assert "passes only when it is at least x" in msg and "95% CI" in msg
    r.assert_faster(1.5, strict=False)  # the weaker check: only refuted claims fail
    with pytest.raises(SpeedupError, match="whole interval of the speedup is below it"):
        r.assert_faster(hi * 1.01, strict=False)


def test_identical_code_never_reaches_a_speedup():
    for seed in range(50):
        r = ab_result(1.0, seed=seed)
        with pytest.raises(SpeedupError):
            r.assert_faster(1.2)
    passed = 0
    for seed in range(100):
        try:
            ab_result(1.0, seed=seed).assert_faster(1.0)
            passed += 1
        except SpeedupError:
            pass
    assert passed <= 5  # "B is faster" is shown for identical code at most at the interval's one-sided rate


def test_assert_not_slower_needs_evidence_too():
    r = ab_result(1.0)
    r.assert_not_slower(0.10)
    with pytest.raises(SpeedupError, match="not shown"):
        ab_result(1 / 1.2).assert_not_slower(0.10)
