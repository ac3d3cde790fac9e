"""Tiny calls timed right (issue 14, item 3): the batch is sized from steady-state calls, and the
stage's hard limit is checked between rounds, never once a call.

Driven by a fake clock that moves only when the timed function runs (each call's duration is
given by its index), so every batch size and count is exact; nothing here is timed for real.
"""
from __future__ import annotations

import sys

import pytest

from pytest_llmcycle.config import Settings
from pytest_llmcycle.measure.timing import CALIBRATION_CALLS, MAX_NUMBER, TimingPolicy, calibrate, time_callable
from pytest_llmcycle.run.fixture import LLMCycle, StageDeadline
from pytest_llmcycle.run.session import RunState
from fakeclock import FakeClock  # noqa: E402

US = 1_000
POLICY = TimingPolicy(budget_s=0.01, min_rounds=10, warmup_rounds=2, warmup_fraction=0.0)


def no_sync() -> None:
    return None


def warming(cold_ns: float, slow: dict, steady_ns: float):
    """Call 0 is cold, calls in ``slow`` take their own time (first-call costs), the rest ``steady_ns``."""
    return lambda i: cold_ns if i == 0 else slow.get(i, steady_ns)


def test_the_batch_is_sized_from_steady_calls_not_from_a_slow_second_call():
    # a ~1 us callable whose second call runs 4x slower (the old rule sized batches of 25 us from it)
    clk = FakeClock(warming(50 * US, {1: 4 * US, 2: 2 * US}, 1 * US))
    m = time_callable(clk.work, "cpu", POLICY, clk)
    assert m.number == 100  # 100 steady calls: a 100 us batch
    assert set(m.samples_ns) == {1 * US}
    assert m.number * min(m.samples_ns) >= POLICY.min_sample_s * 1e9


def test_batches_grow_until_one_lasts_the_minimum_sample():
    # still warming up over every single calibration call: the first batch falls short and grows
    clk = FakeClock(lambda i: 3 * US if i < CALIBRATION_CALLS else 1 * US)
    number = calibrate(clk.work, no_sync, clk, 100e-6)
    assert number == 110  # 34 calls (from the 3 us estimate) lasted 34 us; then 1.1x the target at 1 us a call
    assert number * 1 * US >= 100 * US
    # the same through time_callable, after its cold call
    slow = {i: 3 * US for i in range(1, CALIBRATION_CALLS + 1)}
    clk2 = FakeClock(warming(50 * US, slow, 1 * US))
    assert time_callable(clk2.work, "cpu", POLICY, clk2).number == 110


def test_a_long_call_is_not_batched_and_costs_one_calibration_call():
    clk = FakeClock(lambda i: 1_000 * US)  # 1 ms: five times the 100 us target and more
    m = time_callable(clk.work, "cpu", POLICY, clk)
    assert m.number == 1
    # cold + one calibration call + warm-up rounds + measured rounds, one call each
    assert clk.calls == 1 + 1 + (m.warmup_rounds - 2) + m.rounds


def test_a_call_near_the_target_takes_the_warm_calls_then_one_call_a_sample():
    clk = FakeClock(lambda i: 400 * US if i == 0 else 150 * US)  # steady 150 us: above the target
    number = calibrate(clk.work, no_sync, clk, 100e-6)
    assert number == 1 and clk.calls == CALIBRATION_CALLS  # its fastest warm call decides: no batch


def test_the_batch_is_capped():
    clk = FakeClock(lambda i: 1)  # 1 ns a call: 100 us would take 100,000 calls
    assert calibrate(clk.work, no_sync, clk, 100e-6) == MAX_NUMBER


def test_the_check_hook_runs_between_batches_never_inside_one():
    clk = FakeClock(warming(50 * US, {1: 4 * US}, 1 * US))
    seen: list[int] = []  # the call count each time the hook ran

    m = time_callable(clk.work, "cpu", POLICY, clk, check=lambda: seen.append(clk.calls))
    assert m.number == 100
    batches = 1 + m.warmup_rounds - 2 + m.rounds  # the calibration batch, warm-up and measured rounds
    assert len(seen) == 1 + batches  # once after the cold call, then once before each batch
    assert len(seen) < clk.calls / 50
    # the hook always ran with a whole number of batches done after the single calls (1 cold + 3 calibration)
    assert all((c - 1 - CALIBRATION_CALLS) % m.number == 0 for c in seen[1:])


def test_an_expired_stage_limit_stops_the_rounds_at_the_next_batch():
    deadline = StageDeadline("tiny", 300.0)
    clk = FakeClock(lambda i: 1 * US)

    def work() -> None:
        clk.work()
        if clk.calls == 1_000:  # the limit passes in the middle of a batch
            deadline.expired = True

    with pytest.raises(pytest.fail.Exception, match="ran past its hard limit of 300 s"):
        time_callable(work, "cpu", TimingPolicy(budget_s=10.0, min_rounds=10_000), clk, check=deadline.check)
    assert clk.calls == 1_004  # the batch it expired in (100 calls from 904) ran to its end; none after


def test_the_fixture_times_the_callable_itself_not_a_guard_around_it(tmp_path):
    s = Settings(device="cpu", threads=1, budget_s=0.01, min_rounds=3, warmup_rounds=1, machine_check=False, counters=False)
    lc = LLMCycle(RunState(s, tmp_path, stage_timeout_s=60), "tests/test_x.py::test_y", s)
    callers: set[str] = set()

    def fn() -> None:
        callers.add(sys._getframe(1).f_code.co_name)

    lc.measure("tiny", fn)
    lc.counted("tiny counted", fn, counters=False)
    assert callers and "guarded" not in callers  # called straight from the timing loops
