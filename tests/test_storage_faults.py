"""Faults that used to get through the baseline files (issue 15, storage side).

Nothing lost: every writer of one file takes one lock whatever its temp folder; writing several
files says exactly which were written. Nothing injected: a report or another tool's JSON is never
read as baselines, and an entry whose numbers disagree with its own samples is refused. And the
small ones: deep nesting, a byte-order mark, CRLF line endings, a symlink loop, a full disk, a
lock held too long.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmcycle.config import Settings
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import jsondoc
from pytest_llmcycle.run.session import RunState
from pytest_llmcycle.storage import baseline as bl
from pytest_llmcycle.storage.baseline import (
    BaselineError,
    BaselineFiles,
    Baselines,
    Entry,
    NotABaselineFile,
    append_process,
    entry_from_samples,
    merge_into_file,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {"threads": 2, "torch": "2.3.0"}


def entry(median: float = 10.0) -> Entry:
    return Entry(median, median * 0.99, median * 1.01, 5, tuple(median * f for f in (0.98, 0.99, 1.0, 1.01, 1.02)))


def one_line_naming(e: BaseException, path: Path) -> str:
    msg = str(e)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def write_raw(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def stage_doc(stage: dict) -> dict:
    return {"schema": 1, "devices": {"cpu": {"tests": {"t.py::t": {"s": stage}}}}}


# ----------------------------------------------------------------------------- 1. one lock per file

HOLD_LOCK = """
import sys
from pathlib import Path
from pytest_llmcycle.storage.baseline import baseline_lock
with baseline_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def subprocess_env(tmpdir: Path) -> dict:
    return {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}


@pytest.mark.timeout(60)
def test_a_writer_with_another_temp_folder_waits_for_the_lock_and_is_told_which_file(tmp_path, monkeypatch):
    path = tmp_path / "repo" / "baselines.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    (tmp_path / "tmp-a").mkdir()
    (tmp_path / "tmp-b").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], env=subprocess_env(tmp_path / "tmp-a"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp-b"))  # this process: another temp folder
        with pytest.raises(BaselineError) as e:
            merge_into_file(path, [("cpu", "b.py::t", "s", entry())], timeout_s=0.3)
        msg = one_line_naming(e.value, path)
        assert "waited 0.3 s for the write lock" in msg and "stop that process" in msg
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    merge_into_file(path, [("cpu", "b.py::t", "s", entry())], timeout_s=10)  # released: it goes through
    assert sorted(Baselines.load(path).raw["devices"]["cpu"]["tests"]) == ["a.py::t", "b.py::t"]


WRITER = """
import sys
from pathlib import Path
from pytest_llmcycle.storage.baseline import Entry, merge_into_file
path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
e = Entry(1.0, 1.0, 1.0, 3, (1.0, 1.0, 1.0))
for i in range(count):  # one merge per entry: many chances to interleave
    merge_into_file(path, [("cpu", f"{name}::t{i}", "s", e)], timeout_s=60)
"""


@pytest.mark.timeout(120)
def test_writers_in_different_temp_folders_lose_no_entry(tmp_path):
    path = tmp_path / "baselines.json"
    procs = []
    for w in range(4):
        tmpdir = tmp_path / f"job-{w}"
        tmpdir.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{w}", "8"], env=subprocess_env(tmpdir)))
    assert [p.wait(timeout=100) for p in procs] == [0, 0, 0, 0]
    tests = Baselines.load(path).raw["devices"]["cpu"]["tests"]
    assert sorted(tests) == sorted(f"w{w}::t{i}" for w in range(4) for i in range(8))


def test_the_lock_creates_nothing_and_one_process_may_hold_two_files_of_one_folder(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    with bl.baseline_lock(a, timeout_s=1), bl.baseline_lock(b, timeout_s=1):  # prune locks every file
        merge_into_file(a, [("cpu", "a.py::t", "s", entry())], timeout_s=1)
    merge_into_file(b, [("cpu", "b.py::t", "s", entry())], timeout_s=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # nothing to git-ignore


# ----------------------------------------------------------------------------- 2. only baseline files are baselines


def test_a_written_file_says_what_it_is_and_a_file_of_the_previous_version_still_loads(tmp_path):
    path = tmp_path / "b.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    assert json.loads(path.read_text())["format"] == bl.FORMAT == "pytest-llmcycle-baselines"
    old = write_raw(tmp_path / "old.json", stage_doc(entry().to_json()))  # no format field
    assert Baselines.load(old).entry("cpu", "t.py::t", "s") is not None


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"format": jsondoc.FORMAT, "schema": 1, "results": []}, "is a pytest-llmcycle JSON report, not a baseline file"),
        ({"format": "something-else", "schema": 1, "devices": {}}, "is a 'something-else' document, not a baseline file"),
        ({"name": "web", "version": "1.0.0"}, "is not a baseline file (no 'format', 'schema' or 'devices' field)"),
    ],
)
def test_a_report_or_another_json_file_is_never_read_as_baselines(tmp_path, doc, fragment):
    path = write_raw(tmp_path / "baselines.json", doc)
    with pytest.raises(NotABaselineFile) as e:
        Baselines.load(path)
    assert fragment in one_line_naming(e.value, path)
    with pytest.raises(BaselineError):  # and a writer leaves it alone
        merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    assert json.loads(path.read_text()) == doc


def test_other_json_files_in_a_module_folder_are_skipped_with_a_note(tmp_path):
    folder = tmp_path / "perf"
    files = BaselineFiles(folder / "{module}.json")
    merge_into_file(files.path_for("tests/test_a.py::t"), [("cpu", "tests/test_a.py::t", "s", entry())])
    write_raw(folder / "latency.json", {"format": jsondoc.FORMAT, "schema": 1, "results": []})
    write_raw(folder / "package.json", {"name": "web"})
    files.preload()
    assert len(files.skipped) == 2
    assert str(folder / "latency.json") in files.skipped[0] and "JSON report" in files.skipped[0]
    assert str(folder / "package.json") in files.skipped[1]
    assert all(line.startswith("skipped ") and "\n" not in line for line in files.skipped)
    assert files.load("tests/test_a.py::t").entry("cpu", "tests/test_a.py::t", "s") is not None
    # a broken baseline file is still fatal: it may be one of ours, truncated
    (folder / "tests.test_b.json").write_text('{"schema": 1, "devices": {"cpu"')
    with pytest.raises(BaselineError, match="is not valid JSON"):
        BaselineFiles(folder / "{module}.json").preload()


def test_a_test_module_whose_file_is_a_report_is_refused_by_name(tmp_path):
    files = BaselineFiles(tmp_path / "{module}.json")
    report = write_raw(tmp_path / "test_x.json", {"format": jsondoc.FORMAT, "schema": 1, "results": []})
    files.preload()  # skipped up front...
    with pytest.raises(NotABaselineFile) as e:  # ...and refused when test_x.py's baselines are needed
        files.load("test_x.py::t")
    one_line_naming(e.value, report)


# ----------------------------------------------------------------------------- 5. several files


def per_module_run(tmp_path: Path, modules: list[str]) -> RunState:
    run = RunState(Settings(baseline="perf/{module}.json", device_key="this-runner"), tmp_path)
    # another device key than the run's: no reference workload is timed in these tests
    run.pending = [("other", f"{m}.py::t", "s", entry()) for m in modules]
    return run


def test_a_file_name_that_is_too_long_stops_every_write_up_front_and_is_named(tmp_path):
    modules = ["a" * 300] + [f"test_{i}" for i in range(9)]  # the long one sorts first
    run = per_module_run(tmp_path, modules)
    with pytest.raises(BaselineError) as e:
        run.write_updates()
    msg = str(e.value)
    assert "its name is too long" in msg and "a" * 300 in msg and "none of the 10 baseline file(s) was written" in msg
    assert "\n" not in msg
    assert not (tmp_path / "perf").exists() or list((tmp_path / "perf").iterdir()) == []
    assert run.written == [] and len(run.pending) == 10


def test_a_name_that_fits_but_leaves_no_room_for_the_temp_file_is_refused_too(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert bl.write_problem(tmp_path / ("b" * (name_max - 5) + ".json")) is not None
    assert bl.write_problem(tmp_path / "baselines.json") is None


def test_a_file_that_fails_while_written_does_not_stop_the_others_and_the_error_says_which(tmp_path, monkeypatch):
    run = per_module_run(tmp_path, ["test_a", "test_b", "test_c"])
    real = bl.atomic_write_text

    def disk_full_for_b(path, text):
        if Path(path).name == "test_b.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(bl, "atomic_write_text", disk_full_for_b)
    with pytest.raises(BaselineError) as e:
        run.write_updates()
    msg = str(e.value)
    perf = tmp_path / "perf"
    assert msg.startswith(f"1 of 3 baseline files failed: cannot write baseline file {perf / 'test_b.json'}")
    assert f"written: {perf / 'test_a.json'}, {perf / 'test_c.json'}" in msg
    assert sorted(p.name for p in perf.iterdir()) == ["test_a.json", "test_c.json"]
    assert run.written_files == [str(perf / "test_a.json"), str(perf / "test_c.json")]
    assert [row[1] for row in run.pending] == ["test_b.py::t"]  # kept: not written


# ----------------------------------------------------------------------------- 6. numbers that fit their samples

samples_lists = st.lists(st.floats(1e-6, 1e6, allow_nan=False), min_size=1, max_size=400)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples_lists, st.lists(samples_lists, max_size=3))
def test_every_entry_the_writer_makes_loads_again(first, more):
    e = entry_from_samples(first, "call", None, ENV)
    stored = [e]
    for extra in more:  # --llmcycle-update-append pools later processes into it
        stored.append(append_process(stored[-1], entry_from_samples(extra, "call", None, ENV)))
    b = Baselines(Path("/nonexistent/b.json"))
    for i, x in enumerate(stored):
        b.set_entry("cpu", f"t.py::t{i}", "s", x)
    back = Baselines.loads(b.dumps(), b.path)
    for i, x in enumerate(stored):
        assert back.entry("cpu", f"t.py::t{i}", "s").median_ms == bl.round_sig(x.median_ms)


def recorded(samples=None) -> dict:
    return entry_from_samples(samples or [10.0 + 0.01 * i for i in range(200)], "call", None, ENV).to_json()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: {**d, "median_ms": d["median_ms"] / 2}, "which its samples_ms do not give (expected 10.9"),
        (lambda d: {**d, "median_ms": d["median_ms"] / 2, "process_medians_ms": [5.0, 10.0]}, "has median_ms="),
        (lambda d: {**d, "q1_ms": d["q3_ms"], "q3_ms": d["q1_ms"]}, "has q1_ms="),
        (lambda d: {**d, "process_medians_ms": [11.0, 30.0]}, "has process_medians_ms 30.0 outside its samples' range"),
    ],
)
def test_a_hand_edit_that_would_change_the_verdict_is_refused(tmp_path, edit, fragment):
    good = recorded([10.0 + 0.01 * i for i in range(200)])
    path = write_raw(tmp_path / "b.json", stage_doc(edit(good)))
    with pytest.raises(BaselineError) as e:
        Baselines.load(path)
    msg = one_line_naming(e.value, path)
    assert fragment in msg and "devices.cpu.tests['t.py::t'].s" in msg


def test_quartiles_in_the_wrong_order_are_refused_even_where_the_samples_allow_them(tmp_path):
    path = write_raw(tmp_path / "b.json", stage_doc({"median_ms": 1.0, "q1_ms": 1.0, "q3_ms": 0.9, "samples_ms": [0.9, 1.0, 1.1]}))
    with pytest.raises(BaselineError, match=r"out of order \(expected q1 <= median <= q3\)"):
        Baselines.load(path)


def test_an_entry_per_token_is_never_judged_against_a_measurement_per_call():
    stored = Entry.from_json({**recorded(), "unit": "token"})
    current = vd.Evidence([5.0] * 20, "call")  # twice as fast, per call
    v = vd.decide(vd.Case(stored.evidence(), current))
    assert v.outcome == vd.NOT_COMPARABLE and v.decided_by == vd.BY_UNIT
    assert "baseline per token, now per call" in v.reason


# ----------------------------------------------------------------------------- 9. the smaller ones


def test_deep_nesting_is_refused_at_load_with_a_clear_line(tmp_path):
    deep: object = 1.0
    for _ in range(300):
        deep = {"x": deep}
    path = write_raw(tmp_path / "b.json", stage_doc({**recorded(), "note": deep}))
    with pytest.raises(BaselineError) as e:
        Baselines.load(path)
    assert f"more than {bl.MAX_DEPTH} levels deep" in one_line_naming(e.value, path)
    shallow = write_raw(tmp_path / "ok.json", stage_doc({**recorded(), "note": {"a": {"b": [1, 2]}}}))
    Baselines.load(shallow)  # what a plugin-written file nests is far below the limit


def test_a_byte_order_mark_is_read_and_kept(tmp_path):
    path = tmp_path / "b.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert Baselines.load(path).entry("cpu", "a.py::t", "s") is not None
    merge_into_file(path, [("cpu", "b.py::t", "s", entry())])
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf{") and data.count(b"\xef\xbb\xbf") == 1
    assert len(Baselines.load(path).raw["devices"]["cpu"]["tests"]) == 2


def test_a_crlf_file_keeps_its_line_endings_when_written(tmp_path):
    path = tmp_path / "b.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    lf = path.read_bytes()
    path.write_bytes(lf.replace(b"\n", b"\r\n"))
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])  # the same entry again: nothing changes
    assert path.read_bytes() == lf.replace(b"\n", b"\r\n")
    merge_into_file(path, [("cpu", "b.py::t", "s", entry())])
    data = path.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") > 10  # every line CRLF, none bare LF
    path.write_bytes(lf)
    merge_into_file(path, [("cpu", "b.py::t", "s", entry())])
    assert b"\r" not in path.read_bytes()  # and an LF file stays LF


def test_a_symlink_loop_is_an_error_not_a_missing_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(BaselineError) as e:
        Baselines.load(a)
    assert "is a symlink loop" in one_line_naming(e.value, a)
    with pytest.raises(BaselineError, match="symlink loop"):
        merge_into_file(a, [("cpu", "a.py::t", "s", entry())])


def test_a_full_disk_names_the_file_and_the_fix_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "b.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    before = path.read_bytes()

    def full(p, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bl, "atomic_write_text", full)
    with pytest.raises(BaselineError) as e:
        merge_into_file(path, [("cpu", "b.py::t", "s", entry())])
    msg = one_line_naming(e.value, path)
    assert "No space left on device" in msg and "the old file is unchanged: free some space there" in msg
    assert "--llmcycle-update" in msg
    assert path.read_bytes() == before


def test_a_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "b.json"
    merge_into_file(path, [("cpu", "a.py::t", "s", entry())])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)  # its pid is no longer a live process
    stale = tmp_path / f".b.json.{gone.pid}.abcd1234.tmp"
    stale.write_text("{")
    Baselines.load(path)  # a reader leaves it (it may not write the folder; only a writer holds the lock)
    assert stale.exists()
    merge_into_file(path, [("cpu", "b.py::t", "s", entry())])
    assert not stale.exists()


def test_a_counter_too_large_to_compare_is_refused(tmp_path):
    # counters are compared as floats: a 400-digit integer would overflow in `llmcycle compare`
    path = write_raw(tmp_path / "b.json", stage_doc({**recorded(), "counters": {"flops": 10**400}}))
    with pytest.raises(BaselineError) as e:
        Baselines.load(path)
    assert "has counter flops=" in one_line_naming(e.value, path)
    ok = write_raw(tmp_path / "ok.json", stage_doc({**recorded(), "counters": {"flops": 10**18, "aten_ops": 210}}))
    assert Baselines.load(ok).entry("cpu", "t.py::t", "s").counters == {"flops": 10**18, "aten_ops": 210}


def test_a_run_says_which_files_in_its_module_folder_it_skipped(pytester):
    """The note reaches the terminal: a skipped file is never silent."""
    folder = pytester.path / "perf"
    folder.mkdir()
    write_raw(folder / "package.json", {"name": "web"})
    pytester.makepyfile(
        test_a="""
        from pytest_llmcycle.measure.timing import Measurement

        def test_t(llmcycle):
            llmcycle.record("s", Measurement(samples_ns=(1000, 1100, 1200)))
        """
    )
    result = pytester.runpytest("--llmcycle-baseline", "perf/{module}.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"llmcycle: skipped {folder / 'package.json'}: not a baseline file*"])
