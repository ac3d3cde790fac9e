"""``measure(stage, fn, setup=...)``: fresh inputs before each call, outside the timed region; and
the progress lines a long measurement prints (with ``-v``, or for a long stage; never with ``-q``,
never while a round runs).

Every duration here comes from a fake clock that moves only when the code under test says so:
setup advances it by far more than the timed call, and the samples must show only the call.
"""
from __future__ import annotations

import pytest

# Inline pytester runs drop the modules first imported inside them: torch cannot be loaded twice.
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import torch  # noqa: F401,E402

from pytest_llmcycle.config import Settings
from pytest_llmcycle.measure.timing import TimingPolicy, time_callable
from pytest_llmcycle.run.fixture import LONG_STAGE_S, LLMCycle, Progress
from pytest_llmcycle.run.session import RunState

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


# ---------------------------------------------------------------------- setup=, timing level


def test_setup_runs_before_each_call_and_is_not_timed():
    clock = FakeClock()
    events = []

    def setup():
        events.append("setup")
        clock.t += 1000 * MS  # a whole second of preparation per call
        return (len(events),), {"scale": 2}

    def fn(x, scale):
        events.append(("call", x, scale))
        clock.t += 2 * MS

    m = time_callable(fn, "cpu", TimingPolicy(budget_s=0.01, min_rounds=5, warmup_rounds=1), clock, setup=setup)
    assert m.number == 1  # a 2 ms call would be batched by 1; with setup never
    assert set(m.samples_ns) == {2 * MS} and m.cold_ns == 2 * MS  # setup's second is in none of them
    calls = [e for e in events if e != "setup"]
    assert events == [x for c in calls for x in ("setup", c)]  # setup, then the call it prepared
    assert all(c[1] == i * 2 + 1 and c[2] == 2 for i, c in enumerate(calls))  # each call got its own args


def test_short_calls_with_setup_are_not_batched():
    clock = FakeClock()
    prepared = []

    def fn(xs):
        assert xs == [3, 1, 2], "a call saw inputs another call had changed"
        xs.sort()
        clock.t += 1_000  # 1 us: batched 100x without setup

    m = time_callable(fn, "cpu", TimingPolicy(budget_s=0.001, min_rounds=5, warmup_rounds=1), clock,
                      setup=lambda: prepared.append(1) or (([3, 1, 2],), {}))
    assert m.number == 1 and set(m.samples_ns) == {1_000}
    assert len(prepared) == m.rounds + m.warmup_rounds  # cold + calibration + warm-up + rounds


def test_setup_returning_something_else_is_refused():
    with pytest.raises(TypeError, match=r"setup\(\) must return None or \(args, kwargs\)"):
        time_callable(lambda x: None, "cpu", TimingPolicy(), FakeClock(), setup=lambda: [1, 2])


def test_measure_refuses_a_setup_that_is_not_callable(tmp_path):
    lc = make(tmp_path)
    with pytest.raises(TypeError, match="setup must be a callable"):
        lc.measure("fwd", lambda: None, setup=42)


# ---------------------------------------------------------------------- setup=, a user's story

CONFTEST = '''
import pytest

MS = 1_000_000


class FakeClock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(llmcycle):
    c = FakeClock()
    llmcycle.clock = c
    return c
'''

SETUP_TEST = '''
from conftest import MS


def test_fresh_list_each_call(llmcycle, clock):
    made = []

    def setup():
        clock.t += 50 * MS  # building the input is slow
        made.append([3, 1, 2])
        return (made[-1],), {}

    def sort(xs):
        assert xs == [3, 1, 2]  # never a list an earlier call sorted
        xs.sort()
        clock.t += 2 * MS

    r = llmcycle.measure("sort", sort, setup=setup)
    assert r.samples_ms and set(r.samples_ms) == {2.0}
    assert r.cold_ms == 2.0
    assert all(xs == [1, 2, 3] for xs in made)  # each made list was sorted by exactly its call
'''


def test_setup_story_records_only_the_call(pytester):
    pytester.makeini("[pytest]\nllmcycle_budget = 0.05\nllmcycle_machine_check = false\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sort=SETUP_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-update")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_fresh_list_each_call*sort*ok*"])


# ---------------------------------------------------------------------- progress

PROGRESS_TEST = '''
import os
import pytest
from conftest import MS


def test_short(llmcycle, clock):
    def fn():
        clock.t += 1 * MS
    llmcycle.measure("fwd", fn)


@pytest.mark.llmcycle(budget=0.05)
def test_slow_calls(llmcycle, clock):
    def fn():
        clock.t += 1000 * MS  # every call a second: the section takes well over 5 s
    llmcycle.measure("slow", fn)


@pytest.mark.llmcycle(budget=8.0)
def test_long_budget(llmcycle, clock):
    def fn():
        clock.t += 1 * MS
    llmcycle.measure("long", fn)
'''


@pytest.fixture
def progress_project(pytester):
    pytester.makeini("[pytest]\nllmcycle_budget = 0.05\nllmcycle_machine_check = false\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_p=PROGRESS_TEST)
    return pytester


def test_verbose_announces_every_stage(progress_project):
    result = progress_project.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: timing test_p.py::test_short fwd (budget 0.05 s) ...",
            "llmcycle: timing test_p.py::test_slow_calls slow (budget 0.05 s) ...",
            "llmcycle: timed test_p.py::test_slow_calls slow in *.* s",
            "llmcycle: timing test_p.py::test_long_budget long (budget 8 s) ...",
        ]
    )


def test_default_verbosity_announces_only_long_stages(progress_project):
    result = progress_project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "llmcycle: timing test_p.py::test_short" not in out
    assert "llmcycle: timing test_p.py::test_slow_calls" not in out  # its budget is short ...
    result.stdout.fnmatch_lines(
        [
            "llmcycle: timed test_p.py::test_slow_calls slow in *.* s",  # ... its duration was not
            "llmcycle: timing test_p.py::test_long_budget long (budget 8 s) ...",
        ]
    )


def test_quiet_prints_no_progress(progress_project):
    result = progress_project.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)
    assert "llmcycle: timing" not in result.stdout.str()
    assert "llmcycle: timed" not in result.stdout.str()


def make(tmp_path, progress=None, **kw) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.01, min_rounds=5, warmup_rounds=1, machine_check=False, **kw)
    return LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s, progress=progress)


def test_progress_is_written_outside_the_timed_section(tmp_path):
    events = []
    lc = make(tmp_path, progress=Progress(lambda line: events.append(line), verbosity=1))
    clock = FakeClock()
    lc.clock = clock

    def fn():
        events.append("call")
        clock.t += int(LONG_STAGE_S * 1e9)  # so the section is long enough to be reported after

    lc.measure("fwd", fn)
    assert events[0].startswith("llmcycle: timing tests/test_x.py::test_y fwd")
    assert events[-1].startswith("llmcycle: timed tests/test_x.py::test_y fwd in ")
    assert set(events[1:-1]) == {"call"}  # nothing written between the first and the last call


def test_quiet_progress_writes_nothing_even_for_long_stages():
    lines = []
    p = Progress(lines.append, verbosity=-1)
    p.starting("t.py::t", "fwd", budget_s=60.0)
    p.finished("t.py::t", "fwd", spent_s=600.0)
    assert lines == []
