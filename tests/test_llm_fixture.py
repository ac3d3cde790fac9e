"""The LLM helpers on the fixture object, driven by a fake clock: every time is exact, nothing flakes.

The fake clock moves only when the "model" does work, so the arithmetic of TTFT, per-token
gaps, end-to-end time, phases, A/B speedups and scaling fits is checked to the nanosecond.
"""
from __future__ import annotations

import json

import pytest

from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.engine.counts import stamp
from pytest_llmcycle.engine.stats import summarize
from pytest_llmcycle.storage.baseline import Entry, merge_into_file
from pytest_llmcycle.config import Settings
from pytest_llmcycle.run.fixture import LLMCycle
from pytest_llmcycle.reports.terminal import failure_message
from pytest_llmcycle.run.results import COLD, CYCLE
from pytest_llmcycle.run.session import RunState
from pytest_llmcycle.measure.steps import MarkCountError, Ticker
from pytest_llmcycle.measure.timing import Measurement

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def work(self, ms: float) -> None:
        self.now += int(ms * MS)


def make(tmp_path, **kw) -> LLMCycle:
    s = Settings(device="cpu", threads=1, budget_s=0.05, machine_check=False, **kw)
    lc = LLMCycle(RunState(s, tmp_path), "tests/test_x.py::test_y", s)
    return lc


@pytest.fixture
def clock():
    return FakeClock()


def fake_decode(clock: FakeClock, n: int, prefill_ms: float = 5.0, step_ms: float = 1.0, tail_ms: float = 0.5):
    """A decode loop whose costs are known exactly: prefill, then n-1 steps, then post-processing."""

    def loop(tick):
        clock.work(prefill_ms)
        tick()
        for _ in range(n - 1):
            clock.work(step_ms)
            tick()
        clock.work(tail_ms)
        return "done"

    return loop


def test_tokens_split_into_prefill_decode_and_end_to_end(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock
    g = lc.tokens(fake_decode(clock, 5), n_tokens=5, batch=2)
    assert g.stats.ttft_ms == 5.0
    assert g.stats.tpot_ms == 1.0  # (t_5 - t_1) / (5 - 1)
    assert g.stats.itl_ms == {50: 1.0, 90: 1.0, 99: 1.0}
    assert g.stats.e2e_ms == 5.0 + 4 * 1.0 + 0.5
    assert g.tokens_per_s == pytest.approx(2 * 5 / 0.0095)
    assert (g.prefill.stage, g.decode.stage, g.e2e.stage) == ("prefill", "decode", "e2e")
    assert (g.prefill.unit, g.decode.unit, g.e2e.unit) == ("call", "token", "call")
    assert g.prefill.median_ms == 5.0 and g.decode.median_ms == 1.0 and g.e2e.median_ms == 9.5
    # every measured call contributes N-1 per-token samples, each exactly one step
    assert g.decode.n == g.stats.calls * 4
    assert set(g.decode.samples_ms) == {1.0}


def test_per_token_state_is_reset_every_call(tmp_path, clock):
    # A gap from the last token of one call to the first of the next must never be a "token".
    lc = make(tmp_path, counters=False)
    lc.clock = clock

    def loop(tick):
        clock.work(5.0)
        tick()
        for _ in range(3):
            clock.work(1.0)
            tick()
        clock.work(1000.0)  # long post-processing between calls

    g = lc.tokens(loop)
    assert all(len(c.gaps_ns) == 3 for c in g.calls)
    assert max(g.decode.samples_ms) == 1.0
    assert g.stats.ttft_ms == 5.0


def test_cycle_counts_decode_per_token_and_not_end_to_end(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock
    lc.tokens(fake_decode(clock, 5))
    lc.finish()
    cycle = [r for r in lc.results if r.kind == CYCLE]
    assert len(cycle) == 1
    assert cycle[0].stage == "T = prefill + 4*decode"
    assert cycle[0].median_ms == 5.0 + 4 * 1.0
    cold = {r.stage for r in lc.results if r.kind == COLD}
    assert cold == {"prefill", "decode", "e2e"}


def test_output_length_must_be_pinned(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock
    calls = {"n": 0}

    def loop(tick):
        calls["n"] += 1
        for _ in range(4 if calls["n"] < 3 else 3):  # stops early on the third call (an EOS)
            clock.work(1.0)
            tick()

    with pytest.raises(MarkCountError, match="call 3 made 3 .* expected 4: pin the output length"):
        lc.tokens(loop)
    with pytest.raises(MarkCountError, match="expected 6"):
        lc.tokens(fake_decode(clock, 5), n_tokens=6, name="other")


def test_a_single_token_records_no_decode_stage(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock
    g = lc.tokens(fake_decode(clock, 1))
    assert g.decode is None
    assert [r.stage for r in lc.results] == ["prefill", "e2e"]


def test_named_generations_get_their_own_stages(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock
    lc.tokens(fake_decode(clock, 3), name="greedy")
    lc.tokens(fake_decode(clock, 3), name="beam")
    assert [r.stage for r in lc.results] == ["greedy prefill", "greedy decode", "greedy e2e", "beam prefill", "beam decode", "beam e2e"]
    with pytest.raises(ValueError, match="already measured"):
        lc.tokens(fake_decode(clock, 3), name="beam")


def test_ticker_refuses_marks_outside_a_call_and_restarts_clean(clock):
    t = Ticker("cpu", clock)
    with pytest.raises(RuntimeError, match="outside a timed call"):
        t.tick()
    t.start()
    clock.work(2.0)
    t.tick()
    m1 = t.stop()
    t.start()
    clock.work(3.0)
    t.tick()
    t.tick()
    m2 = t.stop()
    assert m1.marks_ns == (2 * MS,)
    assert m2.marks_ns == (3 * MS, 3 * MS)
    with pytest.raises(RuntimeError, match="outside a timed call"):
        t.tick()


def test_train_step_phases_are_separate_stages(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock

    class Loss:
        def backward(self):
            clock.work(6.0)

    class Opt:
        zeroed = 0

        def step(self):
            clock.work(0.5)

        def zero_grad(self, set_to_none=True):
            Opt.zeroed += 1
            clock.work(100.0)  # outside the timed region: must not show up anywhere

    def loss_fn():
        clock.work(3.0)
        return Loss()

    r = lc.train_step(loss_fn, optimizer=Opt())
    assert (r.forward.median_ms, r.backward.median_ms, r.optimizer.median_ms) == (3.0, 6.0, 0.5)
    assert Opt.zeroed >= 10
    lc.finish()
    cycle = [x for x in lc.results if x.kind == CYCLE][0]
    assert cycle.stage == "T = forward + backward + optimizer"
    assert cycle.median_ms == 9.5


def test_ab_speedup_from_interleaved_rounds(tmp_path, clock):
    lc = make(tmp_path)
    lc.clock = clock
    order = []

    def slow():
        order.append("a")
        clock.work(3.0)

    def fast():
        order.append("b")
        clock.work(2.0)

    r = lc.ab(slow, fast, names=("eager", "sdpa"))
    assert r.speedup == 1.5
    assert r.ci == (1.5, 1.5)
    r.assert_faster(1.3)
    assert order[:4] == ["a", "b", "a", "b"]  # cold and batch-sizing calls
    rounds = order[4:]
    blocks = ["".join(rounds[i : i + 4]) for i in range(0, len(rounds) - 3, 4)]
    assert set(blocks) == {"abba", "baab"}  # then blocks of two rounds, each path first once, by a coin
    assert lc.results == []  # an A/B stores nothing


def test_scaling_over_sizes_with_a_fake_quadratic_cost(tmp_path, clock):
    lc = make(tmp_path, counters=False)
    lc.clock = clock

    def make_fn(n):
        return lambda: clock.work(0.001 * n * n)

    r = lc.scaling("prefill", make_fn, [16, 32, 64, 128])
    f = r.assert_exponent(at_most=2.1, at_least=1.9)
    assert f.exponent == pytest.approx(2.0, abs=1e-6)
    assert lc.results == []
    r2 = lc.scaling("attn", make_fn, [16, 32], record=True)
    assert [x.stage for x in r2.stage_results] == ["attn[16]", "attn[32]"]


# ----------------------------------------------------------------------------- counters in record()


def _write_baseline(lc: LLMCycle, stage: str, samples_ms, counters, unit="call"):
    s = summarize(samples_ms)  # numbers that fit the samples: the loader checks them (issue 15)
    # counted by this version's rules (engine.counts.stamp), as the fixture stores them
    e = Entry(s.median, s.q1, s.q3, len(samples_ms), tuple(samples_ms), unit=unit, env=lc.environment(None), counters=stamp(counters))
    merge_into_file(lc._run.baseline_path, [(lc.device_key, lc.nodeid, stage, e)])
    lc._run.baselines.forget_loaded()  # re-read


def _measurement(ms_values, unit="call"):
    return Measurement(tuple(v * MS for v in ms_values), unit=unit)


def test_a_counter_that_grew_fails_without_a_remeasure(tmp_path):
    lc = make(tmp_path)
    samples = [1.0 + 0.001 * i for i in range(30)]
    _write_baseline(lc, "decode", samples, {"flops": 720896, "aten_ops": 205}, unit="token")

    def no_remeasure():
        raise AssertionError("a counter regression needs no re-measure")

    r = lc.record("decode", _measurement(samples, "token"), remeasure=no_remeasure, counters={"flops": 19594240, "aten_ops": 205})
    assert r.outcome == vd.REGRESSED
    assert "flops" in r.verdict.reason and "aten_ops" not in r.verdict.reason
    msg = failure_message([r])
    assert "counter   flops per token: baseline 720.9 kFLOP, current 19.59 MFLOP" in msg
    assert "no re-measure" in msg


def test_equal_counters_leave_the_time_verdict_alone(tmp_path):
    lc = make(tmp_path)
    samples = [1.0 + 0.001 * i for i in range(30)]
    _write_baseline(lc, "prefill", samples, {"flops": 100, "aten_ops": 7})
    r = lc.record("prefill", _measurement(samples), counters={"flops": 100, "aten_ops": 7})
    assert r.outcome == vd.OK
    assert r.counters == {"flops": 100, "aten_ops": 7, "counted_by": 2}


def test_a_counter_that_fell_is_an_improvement(tmp_path):
    lc = make(tmp_path)
    samples = [1.0 + 0.001 * i for i in range(30)]
    _write_baseline(lc, "prefill", samples, {"aten_ops": 279})
    r = lc.record("prefill", _measurement(samples), counters={"aten_ops": 210})
    assert r.outcome == vd.IMPROVED
    assert r.verdict.reason.startswith("improved on counters: aten_ops -24.73% (279 -> 210)")


def test_counters_are_not_compared_across_environments(tmp_path):
    lc = make(tmp_path)
    samples = [1.0 + 0.001 * i for i in range(30)]
    s = summarize(samples)  # numbers that fit the samples: the loader checks them (issue 15)
    e = Entry(s.median, s.q1, s.q3, 30, tuple(samples), env=dict(lc.environment(None), threads=99), counters={"flops": 1})
    merge_into_file(lc._run.baseline_path, [(lc.device_key, lc.nodeid, "prefill", e)])
    r = lc.record("prefill", _measurement(samples), counters={"flops": 1000})
    assert r.outcome == vd.NOT_COMPARABLE


def test_update_rewrites_an_entry_whose_counters_changed_or_were_missing(tmp_path):
    lc = make(tmp_path, update=True)
    samples = [1.0 + 0.001 * i for i in range(30)]
    _write_baseline(lc, "a", samples, {"flops": 1})
    _write_baseline(lc, "b", samples, {})
    _write_baseline(lc, "c", samples, {"flops": 1})
    lc.record("a", _measurement(samples), counters={"flops": 2})
    lc.record("b", _measurement(samples), counters={"flops": 2})
    lc.record("c", _measurement(samples), counters={"flops": 1})
    assert lc.finish() == []
    lc._run.write_updates()
    data = json.loads(lc._run.baseline_path.read_text())
    stages = data["devices"][lc.device_key]["tests"][lc.nodeid]
    assert stages["a"]["counters"] == {"flops": 2, "counted_by": 2}
    assert stages["b"]["counters"] == {"flops": 2, "counted_by": 2}
    assert stages["c"]["counters"] == {"flops": 1, "counted_by": 2}
    # a test's stages are re-recorded together (issue 11): c, unchanged, is rewritten with a and b
    assert {r.stage for r in lc.results if r.updated} == {"a", "b", "c"}


def test_cuda_marks_are_stream_events_and_the_host_synchronizes_once(monkeypatch):
    """The CUDA path, with torch.cuda's events replaced by fakes on a fake device timeline."""
    import time

    import torch

    from pytest_llmcycle.llm.decode import token_call

    timeline = {"t": 0.0, "syncs": 0, "host_syncs": 0}
    stream = object()

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self, s=None):
            assert s is stream  # on the workload's stream, not the current device's
            self.at = timeline["t"]

        def synchronize(self):
            timeline["syncs"] += 1

        def elapsed_time(self, other):
            return other.at - self.at  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: timeline.__setitem__("host_syncs", timeline["host_syncs"] + 1))

    t = Ticker("cuda:1", time.perf_counter_ns)
    for _ in range(2):  # the events are reused; nothing leaks into the second call
        syncs_before = (timeline["syncs"], timeline["host_syncs"])
        t.start()
        timeline["t"] += 7.0  # prefill on the device
        t.tick()
        for _ in range(3):
            timeline["t"] += 2.0
            t.tick()
        timeline["t"] += 1.0
        c = token_call(t.stop())
        assert c.ttft_ns == 7 * MS and c.gaps_ns == (2 * MS, 2 * MS, 2 * MS) and c.e2e_ns == 14 * MS
        # one host synchronize before the call, one wait on the end event after it; none per token
        assert (timeline["syncs"], timeline["host_syncs"]) == (syncs_before[0] + 1, syncs_before[1] + 1)
    assert len(t._pool) == 4


def test_decode_keeps_its_per_position_timeline_for_the_html_report(tmp_path, clock):
    """Token k's time is the median over calls of gap k: the order the samples lost is kept here."""

    def loop(tick):
        clock.work(5.0)
        tick()
        for k in range(1, 5):  # a step costs k ms: the timeline must climb 1, 2, 3, 4
            clock.work(float(k))
            tick()

    lc = make(tmp_path, counters=False)
    lc.clock = clock
    g = lc.tokens(loop, n_tokens=5)
    assert tuple(g.decode.timeline_ms) == (1.0, 2.0, 3.0, 4.0)  # kept compactly (an array of doubles)
    assert g.prefill.timeline_ms == ()
    from pytest_llmcycle.reports.htmlpage import render
    from pytest_llmcycle.run.results import StageResult

    back = StageResult.from_dict(json.loads(json.dumps(g.decode.to_dict())))
    assert back.timeline_ms == g.decode.timeline_ms
    assert "latency of each generated token, in order" in render(lc.results, {})


# ----------------------------------------------------------------------------- the helpers' interface


class ListRecorder:
    """The smallest Recorder: no baselines, no verdicts; it keeps what the helpers record."""

    def __init__(self, clock) -> None:
        from pytest_llmcycle.config import Settings

        self.device_str = "cpu"
        self.threads = 1
        self.clock = clock
        self.settings = Settings(budget_s=0.05, counters=False)
        self.recorded: list = []

    def check_stage(self, stage: str) -> None:
        if stage in [r[0] for r in self.recorded]:
            raise ValueError(f"stage {stage!r} again")

    def timed_section(self, stage: str):
        from contextlib import nullcontext

        class NoLimit:
            def wrap(self, fn):
                return fn

        return nullcontext(NoLimit())

    def record(self, stage, measurement, *, remeasure=None, dtype=None, cycle_weight=1.0, counters=None):
        self.recorded.append((stage, measurement.unit, cycle_weight, measurement.median_ns / MS))
        return stage


def test_the_helpers_run_on_any_recorder_not_only_the_fixture(clock):
    from pytest_llmcycle.llm.stages import LLMStages, Recorder

    rec = ListRecorder(clock)
    assert isinstance(rec, Recorder)
    g = LLMStages(rec).tokens(fake_decode(clock, 5), n_tokens=5)
    # what each stage is, per what unit, and how much of it one cycle holds
    assert rec.recorded == [("prefill", "call", 1.0, 5.0), ("decode", "token", 4.0, 1.0), ("e2e", "call", 0.0, 9.5)]
    assert (g.prefill, g.decode, g.e2e) == ("prefill", "decode", "e2e")
    with pytest.raises(ValueError, match="stage 'prefill' again"):
        LLMStages(rec).tokens(fake_decode(clock, 5))


def test_the_fixture_is_a_recorder_and_shows_each_helper_with_its_own_signature_and_docs(tmp_path):
    import inspect

    from pytest_llmcycle.llm.stages import LLMStages, Recorder

    lc = make(tmp_path)
    assert isinstance(lc, Recorder)
    assert lc.device_str == "cpu"
    for name in ("generate", "tokens", "train_step", "counted", "scaling", "ab"):
        mine, helper = getattr(LLMCycle, name), getattr(LLMStages, name)
        assert inspect.signature(mine) == inspect.signature(helper), name
        assert mine.__doc__ and mine.__doc__ == helper.__doc__, name


def test_the_llm_layer_reaches_the_fixture_only_through_its_interface():
    """llm/ sits below run/: it never imports from run/ (or the top-level modules) nor reads `_run`."""
    import ast
    from pathlib import Path

    import pytest_llmcycle.llm as llm

    for path in sorted(Path(llm.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                top = module.split(".")[0] if node.level == 2 else module.split(".")[1] if module.startswith("pytest_llmcycle.") else ""
                assert top not in ("run", "plugin", "config", "cli", "compare"), f"{path.name} imports {module}"
            if isinstance(node, ast.Attribute):
                assert node.attr != "_run", f"{path.name}:{node.lineno} reaches into the fixture's _run"
