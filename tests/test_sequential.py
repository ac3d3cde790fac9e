"""engine/sequential.py and run_rounds' stop_when: rounds stop once the verdict is decided.

Synthetic samples and a fake clock that moves only when the timed function runs, so every
count is exact; the error rates are checked on seeded simulations (deterministic).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_llmcycle.engine import sequential as seq
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.measure.timing import TimingPolicy, call_round, run_rounds

# Inline pytester runs drop the modules first imported inside them: torch cannot be loaded twice.
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import torch  # noqa: F401,E402

from fakeclock import MS, FakeClock  # noqa: E402


def noisy(median_ms: float, rel: float, seed: int = 0):
    """Durations around ``median_ms`` with a log-normal spread ``rel`` (ns)."""
    rng = np.random.default_rng(seed)
    return lambda i: median_ms * MS * float(np.exp(rng.normal(0.0, rel)))


def baseline_ms(median_ms: float, rel: float = 0.03, n: int = 200, seed: int = 99) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median_ms * np.exp(rng.normal(0.0, rel, n)))


POLICY = TimingPolicy(budget_s=1.0, min_rounds=10, warmup_rounds=0, warmup_fraction=0.0, precision=1e-9)


def rounds_with(rule, durations, policy=POLICY):
    clk = FakeClock(durations)
    return run_rounds(call_round(clk.work, lambda: None, clk), policy, clk, stop_when=rule)


# ------------------------------------------------------------------ the rule on its own

def test_look_levels_sum_to_alpha_and_grow_stricter():
    levels = [1 - math.erf(seq.look_z(k) / math.sqrt(2)) for k in range(1, 20_000)]
    assert sum(levels) == pytest.approx(seq.SEQ_ALPHA, rel=1e-3)
    assert all(a > b for a, b in zip(levels, levels[1:]))
    with pytest.raises(ValueError, match="look counts from 1"):
        seq.look_z(0)


def test_a_tight_sample_at_the_baseline_is_settled_inside():
    cur = np.linspace(1.96, 2.04, 30)
    assert seq.settled(2.0, cur, 0.10, look=1) == seq.INSIDE


def test_a_sample_straddling_the_threshold_is_not_settled():
    cur = np.linspace(2.0, 2.4, 30)  # median 2.2: +10 %, right on the threshold
    assert seq.settled(2.0, cur, 0.10, look=1, spent=1.0) == ""


def test_outside_waits_for_half_the_budget_and_a_quiet_sample():
    cur = np.linspace(2.58, 2.62, 40)  # +30 %, tight
    assert seq.settled(2.0, cur, 0.10, look=3, spent=0.2) == ""
    assert seq.settled(2.0, cur, 0.10, look=3, spent=seq.OUTSIDE_MIN_SPENT) == seq.OUTSIDE
    faster = cur / 2.6 * 1.6  # -20 %
    assert seq.settled(2.0, faster, 0.10, look=3, spent=0.6) == seq.OUTSIDE
    wide = np.concatenate([np.full(20, 2.3), np.full(20, 3.5)])  # clearly slower, but its own noise is wide
    assert seq.settled(2.0, wide, 0.10, look=3, spent=0.9) == ""


def test_outside_is_judged_against_the_recording_processes_band():
    cur = np.linspace(2.38, 2.42, 40)  # +20 %
    assert seq.settled(2.0, cur, 0.10, look=2, spent=1.0) == seq.OUTSIDE
    band = vd.ok_band(0.10, (0.95, 1.15))  # processes up to +15 %: "ok" up to +26.5 %
    assert band[1] == pytest.approx(1.15 * 1.10)
    assert seq.settled(2.0, cur, 0.10, look=2, spent=1.0, outer=band) == ""


def test_later_looks_demand_more():
    cur = np.random.default_rng(1).normal(2.0, 0.2, 12)
    first = seq.median_interval(np.sort(cur), seq.look_z(1))
    late = seq.median_interval(np.sort(cur), seq.look_z(50))
    assert late[0] <= first[0] and late[1] >= first[1]


def test_from_evidence_has_nothing_to_settle_without_a_comparable_baseline():
    assert seq.from_evidence(None, 0.1) is None
    assert seq.from_evidence(vd.Evidence(samples_ms=(1.0, 2.0), unit="token"), 0.1) is None
    assert seq.from_evidence(vd.Evidence(samples_ms=()), 0.1) is None
    assert callable(seq.from_evidence(vd.Evidence(samples_ms=(1.0, 2.0, 3.0)), 0.1))


def test_with_nothing_to_settle_against_the_precision_stop_is_reachable():
    rule = seq.from_evidence(None, 0.10, precision=0.005)
    assert callable(rule)
    # a 6 % noisy 2 ms stage: its median's half-width does not reach 0.5 % in a 1 s budget, 1/8 of 10 % it does
    m = rounds_with(rule, noisy(2.0, 0.06))
    assert m.stopped_by == "settled" and m.rounds < 200
    m = rounds_with(seq.from_evidence(None, 0.10, precision=0.02), noisy(2.0, 0.03))
    assert m.rounds <= 22  # a wider precision asked for is kept
    strict = TimingPolicy(budget_s=1.0, min_rounds=10, warmup_rounds=0, warmup_fraction=0.0, precision=0.005)
    assert rounds_with(None, noisy(2.0, 0.06), strict).stopped_by == "budget"  # the 0.5 % stop alone


# ------------------------------------------------------------------ run_rounds with the rule

def test_an_unchanged_stage_stops_long_before_its_budget():
    rule = seq.stop_rule(baseline_ms(2.0), 0.10, scale=1e-6)
    m = rounds_with(rule, noisy(2.0, 0.03))
    assert m.stopped_by == "settled"
    assert m.rounds < 30  # 1 s of budget would be ~500 rounds
    assert m.spent_s < 0.1


def test_a_stage_on_the_threshold_uses_its_whole_budget():
    rule = seq.stop_rule(baseline_ms(2.0), 0.10, scale=1e-6)
    m = rounds_with(rule, noisy(2.2, 0.03))
    assert m.stopped_by == "budget"


def test_a_clear_regression_stops_after_half_the_budget():
    rule = seq.stop_rule(baseline_ms(2.0), 0.10, scale=1e-6)
    m = rounds_with(rule, noisy(3.0, 0.03))
    assert m.stopped_by == "settled"
    assert seq.OUTSIDE_MIN_SPENT <= m.spent_s < seq.OUTSIDE_MIN_SPENT * 1.3


def test_the_policy_carries_the_rule_and_the_argument_overrides_it():
    looks = []

    def never(samples, spent):
        looks.append((len(samples), spent))
        return False

    clk = FakeClock(lambda i: 1 * MS)
    m = run_rounds(call_round(clk.work, lambda: None, clk), TimingPolicy(budget_s=0.05, warmup_rounds=0, warmup_fraction=0,
                                                                         stop_when=never), clk)
    assert m.stopped_by == "budget"  # constant samples would have stopped on precision: the rule replaced it
    assert [n for n, _ in looks] == [10, 13, 17, 22, 28, 35, 44]  # geometric schedule, x1.25
    assert all(0 < s < 1 for _, s in looks) and [s for _, s in looks] == sorted(s for _, s in looks)
    m = run_rounds(call_round(clk.work, lambda: None, clk), TimingPolicy(budget_s=0.05, warmup_rounds=0, stop_when=never),
                   clk, stop_when=lambda s, f: True)
    assert m.stopped_by == "settled" and m.rounds == 10  # the floor: min_rounds


def test_without_a_rule_the_precision_stop_is_kept():
    clk = FakeClock(lambda i: 2 * MS)
    m = run_rounds(call_round(clk.work, lambda: None, clk), TimingPolicy(budget_s=1.0, warmup_rounds=0), clk)
    assert m.stopped_by == "precision" and m.rounds == 10


# ------------------------------------------------------------------ error rates under optional stopping

def simulate(true_ratio: float, trials: int, rel: float = 0.05, seed: int = 7):
    """(share stopped inside, share stopped outside) over seeded sequential runs with every look taken."""
    rng = np.random.default_rng(seed)
    base = baseline_ms(2.0, rel, 400, seed=seed + 1)
    base_med = float(np.median(base))
    inside = outside = 0
    for _ in range(trials):
        cur = base_med * true_ratio * np.exp(rng.normal(0.0, rel, 600))
        n, look = 10, 0
        while n <= cur.size:
            look += 1
            got = seq.settled(base_med, cur[:n], 0.10, look, spent=1.0)
            if got:
                inside += got == seq.INSIDE
                outside += got == seq.OUTSIDE
                break
            n = int(math.ceil(n * 1.25))
    return inside / trials, outside / trials


@pytest.mark.parametrize("ratio", [1.10, 1.0 / 1.10])
def test_on_the_band_edge_early_stops_are_rare(ratio):
    # the true ratio sits on the threshold: stopping either way is a wrong claim; at most alpha of the runs
    inside, outside = simulate(ratio, 400)
    assert inside + outside <= 2 * seq.SEQ_ALPHA


def test_unchanged_code_never_stops_outside_and_a_regression_never_inside():
    inside, outside = simulate(1.0, 200)
    assert outside == 0 and inside == 1.0
    inside, outside = simulate(1.15, 200)
    assert inside == 0 and outside > 0.9


# ------------------------------------------------------------------ through the plugin

CONFTEST = '''
import os
import pytest


class FakeClock:
    """Nanoseconds that pass only while measured code runs: ``ms`` (times SLOW) a call, +-2 %."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t

    def work(self, ms):
        factor = float(os.environ.get("SLOW", "1"))
        calls = [0]

        def fn():
            i = calls[0]
            calls[0] += 1
            self.t += int(ms * 1_000_000 * factor * (1 + 0.02 * ((i * 7) % 11 - 5) / 5))

        return fn


@pytest.fixture
def clock(llmcycle):
    c = FakeClock()
    llmcycle.clock = c
    return c
'''

TEST = '''
def test_forward(llmcycle, clock):
    llmcycle.measure("forward", clock.work(2.0))
'''


def rows(pytester, *args):
    import json

    result = pytester.runpytest("--llmcycle-report", "r.json", *args)
    doc = json.loads((pytester.path / "r.json").read_text())
    return result, next(r for r in doc["results"] if r["stage"] == "forward" and r["kind"] == "stage")


def test_the_plugin_stops_an_unchanged_stage_early_and_a_regression_still_fails(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nllmcycle_budget = 0.1\nllmcycle_device_key = ci\nllmcycle_machine_check = false\n")
    pytester.makepyfile(test_model=TEST)
    assert pytester.runpytest("--llmcycle-update").ret == 0
    result, row = rows(pytester)
    result.assert_outcomes(passed=1)
    assert row["verdict"]["outcome"] == "ok"
    assert row["n"] == 10  # settled at the first look (min_rounds); the 0.1 s budget holds 50 rounds
    result, row = rows(pytester, "-o", "llmcycle_early_stop=false")
    assert row["n"] >= 45  # off: rounds run to the budget
    monkeypatch.setenv("SLOW", "1.3")
    result, row = rows(pytester)
    result.assert_outcomes(failed=1)
    assert row["verdict"]["outcome"] == "regressed"
    assert 0.05 / 0.0026 <= row["n"] < 45  # settled outside once half the budget (0.05 s at 2.6 ms) was spent
