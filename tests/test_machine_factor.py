"""The machine factor is measured the same way twice (issue 11, items 1 and 5).

A busy neighbour's time slices interrupt a long batch of the reference workload but slip
between short ones, so a reference stored in 0.1 ms batches and checked in 10 ms batches read
1.3-2.8x "slower" on one unchanged, busy machine. Here the neighbour is a synthetic clock that
steals time on a fixed schedule (:class:`SlicedClock`): every number is exact, nothing is timed.
"""
from __future__ import annotations

import contextlib
import sys

import pytest

from pytest_llmcycle.config import Settings
from pytest_llmcycle.measure import machine
from pytest_llmcycle.run.session import RunState
from pytest_llmcycle.storage.baseline import Baselines, Entry, entry_from_samples

MS = 1_000_000


class SlicedClock:
    """A machine where one call of the workload takes ``call_ms`` of CPU, and a neighbour runs
    for ``steal_ms`` after every ``slice_ms`` of it (0: a quiet machine)."""

    def __init__(self, call_ms: float = 0.2, slice_ms: float = 4.0, steal_ms: float = 0.0) -> None:
        self.t = 0
        self.worked = 0
        self.call_ns, self.slice_ns, self.steal_ns = int(call_ms * MS), int(slice_ms * MS), int(steal_ms * MS)

    def __call__(self) -> int:
        return self.t

    def work(self) -> None:
        before = self.worked // self.slice_ns
        self.worked += self.call_ns
        self.t += self.call_ns + (self.worked // self.slice_ns - before) * self.steal_ns


@pytest.fixture
def machine_clock(monkeypatch):
    """The reference workload runs on a SlicedClock (quiet until the test sets steal_ns)."""
    clock = clock_ = SlicedClock()
    monkeypatch.setattr(machine, "_python_workload", clock.work)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # the pure-Python workload, no torch
    real = machine.measure_reference
    # every timing of the reference reads this clock, also where the run times it (RunState)
    monkeypatch.setattr(machine, "measure_reference", lambda device, clock=None, sample_s=0.0: real(device, clock=clock_ if clock is None else clock, sample_s=sample_s))
    return clock


def stored(clock: SlicedClock, *stage_ms: float, run_id: str = "earlier") -> Entry:
    """The reference as --llmcycle-update stores it after recording stages of ``stage_ms``."""
    return machine.reference_entry("cpu", 1, contextlib.nullcontext(), [ms / 1e3 for ms in stage_ms], run_id, clock=clock)


def factor(clock: SlicedClock, ref: Entry, stage_ms: float) -> float:
    f = machine.machine_factor(ref, "cpu", 1, contextlib.nullcontext(), stage_ms / 1e3, clock=clock)
    assert f is not None
    return f


@pytest.mark.parametrize("sample_ms, bucket_ms", [(0.0, 0.1), (0.05, 0.1), (0.3, 0.5), (1.2, 2.0), (3.0, 2.0),
                                                  (5.0, 10.0), (12.0, 10.0), (30.0, 50.0), (400.0, 50.0)])
def test_a_stage_sample_length_maps_to_the_nearest_batch_length(sample_ms, bucket_ms):
    assert machine.sample_bucket(sample_ms / 1e3) == pytest.approx(bucket_ms / 1e3)


def test_record_stores_the_reference_in_the_batch_lengths_of_the_stages_recorded(machine_clock):
    ref = stored(machine_clock, 0.05, 2.1, 11.0, 9.0)
    # 0.1 ms is the entry's own median; the 2 ms and 10 ms stages add their batch lengths once each
    assert ref.extra[machine.SAMPLED] == {"2": 0.2, "10": 0.2}
    assert ref.median_ms == pytest.approx(0.2)
    assert ref.extra[machine.RUN] == "earlier" and ref.extra["workload"] == machine.workload_name()
    assert sorted(machine.sampled(ref)) == pytest.approx([1e-4, 2e-3, 1e-2])


@pytest.mark.parametrize("stage_ms", [2.0, 10.0, 40.0])
def test_a_busy_machine_recorded_and_checked_busy_reads_one(machine_clock, stage_ms):
    # the neighbour takes 2 ms after every 4 ms of work, at record and at check time
    machine_clock.steal_ns = 2 * MS
    ref = stored(machine_clock, stage_ms)
    assert factor(machine_clock, ref, stage_ms) == pytest.approx(1.0, abs=0.02)


def test_the_old_way_read_a_busy_machine_as_a_slower_one(machine_clock):
    """What the stored reference used to be compared with: 0.1 ms batches then, the stage's now."""
    machine_clock.steal_ns = 2 * MS
    short = machine.measure_reference("cpu", clock=machine_clock, sample_s=0.0).median_ns
    long = machine.measure_reference("cpu", clock=machine_clock, sample_s=0.01).median_ns
    assert long / short == pytest.approx(1.5, abs=0.05)  # one unchanged machine, read "1.5x slower"


def test_a_neighbour_that_arrived_after_recording_shows_in_the_stages_batch_length(machine_clock):
    ref = stored(machine_clock, 10.0)  # quiet when recorded
    machine_clock.steal_ns = 2 * MS
    # a 10 ms stage loses a third of its time slices: so does the reference in 10 ms batches
    assert factor(machine_clock, ref, 10.0) == pytest.approx(1.5, abs=0.05)


def test_a_check_uses_the_stored_batch_length_nearest_the_stage(machine_clock, monkeypatch):
    ref = stored(machine_clock, 2.0, 50.0)
    asked = []
    real = machine.measure_reference
    monkeypatch.setattr(machine, "measure_reference", lambda *a, **k: asked.append(k.get("sample_s")) or real(*a, **k))
    for stage_ms in (1.5, 8.0, 70.0, 0.2):
        factor(machine_clock, ref, stage_ms)
    # 8 ms is nearest 10 ms, which was not recorded: of 2 and 50 (and 0.1), 2 ms is the nearest stored
    assert asked == [pytest.approx(2e-3), pytest.approx(2e-3), pytest.approx(5e-2), 0.0]


def test_a_reference_stored_before_batch_lengths_is_checked_as_it_was_taken(machine_clock, monkeypatch):
    ref = stored(machine_clock)
    old = Entry(ref.median_ms, ref.q1_ms, ref.q3_ms, ref.n, ref.samples_ms, env=ref.env, extra={"workload": machine.workload_name()})
    asked = []
    real = machine.measure_reference
    monkeypatch.setattr(machine, "measure_reference", lambda *a, **k: asked.append(k.get("sample_s")) or real(*a, **k))
    machine_clock.steal_ns = 2 * MS
    assert factor(machine_clock, old, 40.0) == pytest.approx(1.0, abs=0.02)  # 0.1 ms batches, as stored
    assert asked == [0.0]


@pytest.mark.parametrize("raw", [{"2": "fast"}, {"2": -1}, {"x": 0.3}, [0.3], {"2": True}])
def test_a_hand_edited_batch_field_is_ignored_not_a_crash(machine_clock, raw):
    ref = stored(machine_clock)
    edited = Entry(ref.median_ms, ref.q1_ms, ref.q3_ms, ref.n, ref.samples_ms, env=ref.env,
                   extra={"workload": machine.workload_name(), machine.SAMPLED: raw})
    assert list(machine.sampled(edited)) == pytest.approx([1e-4])
    assert factor(machine_clock, edited, 2.0) == pytest.approx(1.0, abs=0.02)


def test_missing_batch_lengths_are_added_and_stored_ones_kept(machine_clock):
    ref = stored(machine_clock, 2.0)
    assert machine.missing_buckets(ref, [2.2e-3, 0.05e-3]) == []
    assert machine.missing_buckets(ref, [9e-3, 2e-3]) == [pytest.approx(1e-2)]
    machine_clock.steal_ns = 2 * MS
    grown = machine.with_buckets(ref, stored(machine_clock, 9.0, 2.0, run_id="later"))
    assert grown.extra[machine.SAMPLED] == {"2": 0.2, "10": pytest.approx(0.3, rel=0.05)}
    assert grown.extra[machine.RUN] == "earlier" and grown.median_ms == ref.median_ms


# ----------------------------------------------------------------------------- stored by an earlier run


def test_a_reference_stored_in_this_run_is_no_measure_of_an_earlier_one(machine_clock):
    ref = stored(machine_clock, run_id="run-1")
    assert machine.stored_earlier(ref, "run-1") is None  # another xdist worker of this run stored it
    assert machine.stored_earlier(ref, "run-2") is ref
    assert machine.stored_earlier(None, "run-2") is None


def write_file(path, ref: Entry) -> None:
    b = Baselines(path)
    b.set_reference("ci", ref)
    b.set_entry("ci", "t.py::test_a", "forward", entry_from_samples([2.0] * 20, "call", None, {"threads": 1}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(b.dumps())


def run_state(tmp_path, run_id: str) -> RunState:
    return RunState(Settings(device_key="ci", threads=1, device="cpu"), tmp_path, run_id=run_id)


def test_the_run_ignores_the_reference_it_stored_itself_and_reads_an_earlier_runs(machine_clock, tmp_path):
    path = tmp_path / ".llmcycle" / "baselines.json"
    write_file(path, stored(machine_clock, 2.0, run_id="gw-run"))
    # a worker of the run that stored it (xdist: every worker shares the controller's testrunuid)
    assert run_state(tmp_path, "gw-run").machine_factor(2e-3, "t.py::test_a") is None
    assert run_state(tmp_path, "next-run").machine_factor(2e-3, "t.py::test_a") == pytest.approx(1.0, abs=0.02)


def test_writing_stores_the_run_and_the_batch_lengths_of_its_stages(machine_clock, tmp_path):
    run = run_state(tmp_path, "rec-1")
    run.pending = [("ci", "t.py::test_a", "forward", entry_from_samples([9.0] * 20, "call", None, {"threads": 1}))]
    run.write_updates()
    ref = Baselines.load(tmp_path / ".llmcycle" / "baselines.json").reference("ci")
    assert ref is not None and ref.extra[machine.RUN] == "rec-1" and set(ref.extra[machine.SAMPLED]) == {"10"}
    # a later run recording a 50 ms stage adds that batch length to the stored reference
    later = run_state(tmp_path, "rec-2")
    later.pending = [("ci", "t.py::test_b", "decode", entry_from_samples([45.0] * 20, "call", None, {"threads": 1}))]
    later.write_updates()
    ref2 = Baselines.load(tmp_path / ".llmcycle" / "baselines.json").reference("ci")
    assert set(ref2.extra[machine.SAMPLED]) == {"10", "50"} and ref2.extra[machine.RUN] == "rec-1"
    assert ref2.extra[machine.SAMPLED]["10"] == ref.extra[machine.SAMPLED]["10"]


# ----------------------------------------------------------------------------- a refused recording fails the run

@pytest.fixture
def flow_project(pytester):
    from test_plugin_flow import CONFTEST, INI, TWO_TESTS

    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TWO_TESTS)
    return pytester


def test_a_refused_recording_exits_non_zero_with_the_command_that_forces_it(flow_project, monkeypatch):
    import shlex

    assert flow_project.runpytest("--llmcycle-update").ret == 0
    monkeypatch.setenv("SLOW_FORWARD", "2.0")
    monkeypatch.setenv("MACHINE_FACTOR", "2.0")  # stands in for timing the reference (test_plugin_flow)
    result = flow_project.runpytest("--llmcycle-update-all", "-o", "llmcycle_machine_check=true")
    result.assert_outcomes(passed=2)  # every test passed, and still the job must not go green
    assert result.ret == 1
    line = next(x for x in result.stdout.lines if "store these numbers anyway:" in x)
    forced = flow_project.runpytest(*shlex.split(line.split("store these numbers anyway:")[1])[1:],
                                    "-o", "llmcycle_machine_check=true")
    assert forced.ret == 0
    forced.stdout.fnmatch_lines(["*wrote 3 baseline entries*"])


def test_every_xdist_worker_of_a_run_shares_its_run_id(pytester):
    pytest.importorskip("xdist")
    pytester.makeini("[pytest]\nllmcycle_device_key = ci\n")
    pytester.makepyfile(test_ids="""
import os, pathlib

def test_a(llmcycle):
    pathlib.Path(os.environ["PYTEST_XDIST_WORKER"] + ".id").write_text(llmcycle._run.run_id)
""")
    # --dist each: every worker runs every test, so each surely writes its id
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    ids = {p.read_text() for p in pytester.path.glob("gw*.id")}
    assert len(list(pytester.path.glob("gw*.id"))) == 2 and len(ids) == 1 and ids != {""}
