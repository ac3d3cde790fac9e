"""The baseline file: deterministic format, validation with actionable errors, atomic writes."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmcycle.engine.stats import summarize
from pytest_llmcycle.storage import baseline as bl
from pytest_llmcycle.storage.baseline import BaselineError, Baselines, Entry


def entry(median=12.3456, samples=None, **kw) -> Entry:
    kw.setdefault("env", {"threads": 2, "torch": "2.3.0", "dtype": "float32"})
    # by default, samples and quartiles that fit the median: the loader checks them (issue 15)
    f = median / 12.3456
    q1, q3 = (12.0 * f, 13.0 * f) if samples is None else (12.0, 13.0)
    samples = (12.0 * f, 12.3456789 * f, 13.0 * f) if samples is None else samples
    return Entry(median_ms=median, q1_ms=q1, q3_ms=q3, n=len(samples), samples_ms=tuple(samples), **kw)


def sample_file(tmp_path) -> Baselines:
    b = Baselines(tmp_path / "baselines.json")
    b.set_entry("cpu-x", "tests/test_b.py::test_z", "forward", entry())
    b.set_entry("cpu-x", "tests/test_a.py::test_y", "decode", entry(unit="token", cold_ms=40.0))
    b.set_entry("cuda-h100", "tests/test_a.py::test_y", "forward", entry(median=1.0))
    return b


# ----------------------------------------------------------------------------- format


def test_the_file_has_a_schema_field_and_sorted_keys(tmp_path):
    text = sample_file(tmp_path).dumps()
    data = json.loads(text)
    assert data["schema"] == bl.SCHEMA_VERSION == 1
    assert "--llmcycle-update" in data["about"]
    assert list(data) == sorted(data)
    assert list(data["devices"]) == ["cpu-x", "cuda-h100"]
    tests = data["devices"]["cpu-x"]["tests"]
    assert list(tests) == sorted(tests)
    assert list(tests["tests/test_b.py::test_z"]["forward"]) == sorted(tests["tests/test_b.py::test_z"]["forward"])
    assert text.endswith("}\n")


def test_times_are_rounded_to_four_significant_digits(tmp_path):
    data = json.loads(sample_file(tmp_path).dumps())
    e = data["devices"]["cpu-x"]["tests"]["tests/test_b.py::test_z"]["forward"]
    assert e["median_ms"] == 12.35
    assert e["samples_ms"] == [12.0, 12.35, 13.0]
    assert bl.round_sig(0.000123456) == 0.0001235
    assert bl.round_sig(123456.0) == 123500.0
    assert bl.round_sig(0.0) == 0.0


def test_one_field_a_line_and_samples_on_one_line(tmp_path):
    text = sample_file(tmp_path).dumps()
    assert '"samples_ms": [12.0, 12.35, 13.0],' in text
    assert '"env": {"dtype": "float32", "threads": 2, "torch": "2.3.0"},' in text
    assert '          "median_ms": 12.35,\n' in text


def test_a_reload_and_re_dump_is_byte_identical(tmp_path):
    text = sample_file(tmp_path).dumps()
    again = Baselines.loads(text, tmp_path / "b.json").dumps()
    assert again == text
    assert Baselines.loads(again, tmp_path / "b.json").dumps() == text


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1e6, allow_nan=False), min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.sampled_from(["threads", "torch", "dtype", "device_name"]), st.one_of(st.integers(1, 64), st.text(max_size=8))),
)
def test_any_entry_survives_dump_load_dump_unchanged(tmp_path_factory, xs, stage, env):
    b = Baselines(tmp_path_factory.getbasetemp() / "h.json")
    s = summarize(xs)  # numbers that fit the samples: the loader checks them (issue 15)
    b.set_entry("cpu-k", "t.py::test[é]", stage, Entry(s.median, s.q1, s.q3, len(xs), tuple(xs), env=env))
    text = b.dumps()
    loaded = Baselines.loads(text, b.path)
    assert loaded.dumps() == text
    e = loaded.entry("cpu-k", "t.py::test[é]", stage)
    assert e.samples_ms == tuple(bl.round_sig(x) for x in xs)
    assert dict(e.env) == env


def test_unknown_fields_of_an_entry_round_trip(tmp_path):
    e = Entry.from_json({"median_ms": 2.0, "samples_ms": [2.0], "note": "from a newer tool", "tokens": 32})
    assert e.extra == {"note": "from a newer tool", "tokens": 32}
    assert e.q1_ms == e.q3_ms == 2.0 and e.n == 1 and e.unit == "call"
    assert Entry.from_json(e.to_json()) == e


def test_setting_one_entry_leaves_every_other_line_identical(tmp_path):
    before = sample_file(tmp_path).dumps()
    b = Baselines.loads(before, tmp_path / "b.json")
    b.set_entry("cpu-x", "tests/test_b.py::test_z", "forward", entry(median=99.0, samples=(99.0,)))
    after = b.dumps()
    changed = [(x, y) for x, y in zip(before.splitlines(), after.splitlines()) if x != y]
    assert len(before.splitlines()) == len(after.splitlines())
    assert [y.strip() for _, y in changed] == ['"median_ms": 99.0,', '"n": 1,', '"samples_ms": [99.0],']


def test_a_nan_time_is_never_written(tmp_path):
    b = Baselines(tmp_path / "b.json")
    b.set_entry("cpu", "t::t", "s", entry(median=float("nan")))
    with pytest.raises(ValueError):
        b.dumps()


def _reference_dump(v, depth=0):
    """The layout spelled with json.dumps only: what the fast writer must reproduce byte for byte."""
    pad = "  " * (depth + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        if all(not isinstance(x, (dict, list)) for x in v.values()):
            return json.dumps(dict(sorted(v.items())), allow_nan=False, separators=(", ", ": "))
        items = [f"{pad}{json.dumps(k)}: {_reference_dump(v[k], depth + 1)}" for k in sorted(v)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            return json.dumps(v, allow_nan=False, separators=(", ", ": "))
        return "[\n" + ",\n".join(pad + _reference_dump(x, depth + 1) for x in v) + "\n" + "  " * depth + "]"
    return json.dumps(v, allow_nan=False)


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6)
)
_json_docs = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_json_docs)
def test_the_writer_matches_plain_json_dumps_layout_for_any_document(doc):
    assert bl.dumps(doc) == _reference_dump(doc) + "\n"
    assert json.loads(bl.dumps(doc)) == doc


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_writer_refuses_non_finite_numbers_anywhere(bad):
    for doc in ([1.0, bad], {"a": bad}, {"a": [bad]}, bad):
        with pytest.raises(ValueError):
            bl.dumps(doc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40))
def test_vectorised_rounding_equals_round_sig_value_for_value(xs):
    got = bl.round_sig_many(xs)
    want = [bl.round_sig(x) for x in xs]
    assert [repr(x) for x in got] == [repr(x) for x in want]


def test_entries_to_json_is_each_entrys_to_json():
    es = [entry(), entry(samples=(1.23456, 98765.4321, 5e-7)), entry(samples=(3.0,), cold_ms=2.5, unit="token")]
    assert bl.entries_to_json(es) == [e.to_json() for e in es]
    assert bl.entries_to_json([]) == []


def test_vectorised_rounding_on_ties_and_edges():
    # halves at the 4th digit (exact in binary, or the nearest double to one), powers of ten,
    # 9999.5-style carries, subnormals and the largest doubles
    xs = [1234.5, 1235.5, 0.12345, 0.00012345, 99995.0, 9999.5, 999.95, 1e-3, 1e22, 1e23, 5e-324,
          2.2250738585072014e-308, 1.7976931348623157e308, 123456789.0, -1234.5, 0.0, -0.0, 1.0]
    xs += [k / 2**m for k in range(1, 400, 7) for m in range(0, 12)]
    assert [repr(x) for x in bl.round_sig_many(xs)] == [repr(bl.round_sig(x)) for x in xs]


# ----------------------------------------------------------------------------- loading


def test_a_missing_file_is_an_empty_baseline_set(tmp_path):
    b = Baselines.load(tmp_path / "nope.json")
    assert b.entry("cpu", "t::t", "s") is None
    assert list(b.iter_entries()) == []


def test_entries_and_references_read_back(tmp_path):
    b = sample_file(tmp_path)
    b.set_reference("cpu-x", entry(median=3.0, extra={"workload": "w"}))
    b.path.write_text(b.dumps())
    loaded = Baselines.load(b.path)
    assert loaded.entry("cpu-x", "tests/test_a.py::test_y", "decode").unit == "token"
    assert loaded.entry("cpu-x", "tests/test_a.py::test_y", "decode").cold_ms == 40.0
    assert loaded.entry("cpu-x", "tests/test_a.py::test_y", "forward") is None
    assert loaded.reference("cpu-x").extra == {"workload": "w"}
    assert [k[:3] for k in loaded.iter_entries()] == [
        ("cpu-x", "tests/test_a.py::test_y", "decode"),
        ("cpu-x", "tests/test_b.py::test_z", "forward"),
        ("cuda-h100", "tests/test_a.py::test_y", "forward"),
    ]
    assert loaded.remove_test("cpu-x", "tests/test_b.py::test_z")
    assert not loaded.remove_test("cpu-x", "tests/test_b.py::test_z")


GOOD_ENTRY = {"median_ms": 1.0, "samples_ms": [1.0, 1.1]}


def file_with(entry_json) -> str:
    return json.dumps({"schema": 1, "devices": {"cpu": {"tests": {"t.py::test": {"fwd": entry_json}}}}})


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "is empty (truncated?)"),
        ('{"schema": 1, "devices": {"cpu": {"tes', "is not valid JSON (line 1"),
        ("[1, 2]", "is not a JSON object"),
        ('{"devices": {}}', "has no integer 'schema' field"),
        ('{"schema": "1", "devices": {}}', "has no integer 'schema' field"),
        ('{"schema": 2, "devices": {}}', "has schema 2, newer than this pytest-llmcycle reads (1): upgrade"),
        ('{"schema": 0, "devices": {}}', "has unknown schema 0"),
        ('{"schema": 1, "devices": []}', "'devices' is not an object"),
        ('{"schema": 1, "devices": {"cpu": {"tests": []}}}', "devices.cpu.tests is not an object"),
        (file_with({**GOOD_ENTRY, "median_ms": -1.0}), "has median_ms=-1.0, expected a positive number"),
        (file_with({**GOOD_ENTRY, "median_ms": 0}), "has median_ms=0"),
        (file_with({**GOOD_ENTRY, "median_ms": "fast"}), "has median_ms='fast'"),
        (file_with({**GOOD_ENTRY, "samples_ms": [1.0, -2.0]}), "has a sample -2.0 in samples_ms"),
        (file_with({**GOOD_ENTRY, "samples_ms": []}), "has no 'samples_ms' list"),
        (file_with({**GOOD_ENTRY, "q1_ms": -0.5}), "has q1_ms=-0.5"),
        (file_with({**GOOD_ENTRY, "n": 0}), "has n=0"),
        (file_with({**GOOD_ENTRY, "env": "threads=2"}), "has 'env' that is not an object"),
        (file_with({**GOOD_ENTRY, "unit": 3}), "has a 'unit' that is not a string"),
        (file_with(GOOD_ENTRY).replace("1.1", "NaN"), "NaN is not a valid time"),
        (file_with(GOOD_ENTRY).replace("1.1", "Infinity"), "Infinity is not a valid time"),
        (file_with(GOOD_ENTRY).replace("1.1", "1e999"), "has a sample inf"),
    ],
)
def test_a_bad_file_is_refused_with_the_file_name_and_a_fix(tmp_path, text, fragment):
    p = tmp_path / "baselines.json"
    p.write_text(text)
    with pytest.raises(BaselineError) as e:
        Baselines.load(p)
    msg = str(e.value)
    assert fragment in msg
    assert str(p) in msg
    assert "\n" not in msg
    if "upgrade" not in fragment:
        assert "--llmcycle-update" in msg


def test_an_entry_error_names_the_entry(tmp_path):
    with pytest.raises(BaselineError, match=r"devices\.cpu\.tests\['t\.py::test'\]\.fwd has median_ms=-1"):
        Baselines.loads(file_with({**GOOD_ENTRY, "median_ms": -1}), tmp_path / "b.json")


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b'{"schema": 1, "about": "\xff\xfe"}')
    with pytest.raises(BaselineError, match="cannot read baseline file"):
        Baselines.load(p)


# ----------------------------------------------------------------------------- atomic writes


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_creates_folders_and_a_readable_file(tmp_path):
    p = tmp_path / ".llmcycle" / "deep" / "baselines.json"
    bl.atomic_write_text(p, "hello\n")
    assert p.read_text() == "hello\n"
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert leftovers(p.parent) == []


def test_atomic_write_keeps_the_existing_mode(tmp_path):
    p = tmp_path / "b.json"
    p.write_text("old")
    os.chmod(p, 0o600)
    bl.atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert p.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, broken):
    p = tmp_path / "b.json"
    p.write_text("the old, good content\n")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bl.os, broken, boom)
    with pytest.raises(OSError, match="No space left"):
        bl.atomic_write_text(p, "the new content\n" * 1000)
    monkeypatch.undo()
    assert p.read_text() == "the old, good content\n"
    assert leftovers(tmp_path) == []


def test_a_write_that_fails_while_encoding_leaves_the_old_file(tmp_path):
    p = tmp_path / "b.json"
    p.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        bl.atomic_write_text(p, "x" * 100_000 + "\ud800")  # a lone surrogate cannot be written as UTF-8
    assert p.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_a_failed_first_write_creates_no_file(tmp_path, monkeypatch):
    p = tmp_path / "b.json"
    monkeypatch.setattr(bl.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        bl.atomic_write_text(p, "{}\n")
    assert not p.exists()
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- merging writes


def test_merge_keeps_entries_written_by_others_since_the_run_started(tmp_path):
    p = tmp_path / "b.json"
    ours = sample_file(tmp_path)
    p.write_text(ours.dumps())
    # another process (an xdist worker, a parallel job) adds an entry after we loaded the file
    other = Baselines.load(p)
    other.set_entry("cpu-x", "tests/test_c.py::test_other", "forward", entry(median=5.0))
    p.write_text(other.dumps())

    merged = bl.merge_into_file(p, [("cpu-x", "tests/test_b.py::test_z", "forward", entry(median=7.0))])
    on_disk = Baselines.load(p)
    assert on_disk.entry("cpu-x", "tests/test_c.py::test_other", "forward").median_ms == 5.0
    assert on_disk.entry("cpu-x", "tests/test_b.py::test_z", "forward").median_ms == 7.0
    assert on_disk.entry("cuda-h100", "tests/test_a.py::test_y", "forward").median_ms == 1.0
    assert merged.dumps() == p.read_text()


def test_merge_never_overwrites_a_file_that_went_bad(tmp_path):
    p = tmp_path / "b.json"
    p.write_text('{"schema": 1, "devices": {"cpu": {"tes')
    with pytest.raises(BaselineError):
        bl.merge_into_file(p, [("cpu", "t::t", "s", entry())])
    assert p.read_text() == '{"schema": 1, "devices": {"cpu": {"tes'


def test_merge_writes_references_too(tmp_path):
    p = tmp_path / "b.json"
    bl.merge_into_file(p, [("cpu", "t::t", "s", entry())], references={"cpu": entry(median=2.0)})
    assert Baselines.load(p).reference("cpu").median_ms == 2.0


def test_the_lock_leaves_no_file_in_the_repository(tmp_path):
    # issue 15: the lock is the file's folder (one lock whatever TMPDIR), so nothing is created
    bl.merge_into_file(tmp_path / "b.json", [("cpu", "t::t", "s", entry())])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


# ----------------------------------------------------------------------------- several recording processes


def test_appending_processes_pools_samples_and_lists_each_processs_median():
    from pytest_llmcycle.storage.baseline import PROCESS_MEDIANS, append_process, entry_from_samples, process_range

    env = {"threads": 1, "torch": "2.13.0"}
    first = append_process(None, entry_from_samples([10.0 + i / 100 for i in range(100)], "call", None, env))
    assert first.extra[PROCESS_MEDIANS] == [10.5] and process_range(first) is None  # one process: no range
    second = append_process(first, entry_from_samples([12.0 + i / 100 for i in range(100)], "call", None, env))
    assert second.extra[PROCESS_MEDIANS] == [10.5, 12.5]
    assert len(second.samples_ms) == bl.STORED_SAMPLES and second.n == 200
    assert sum(s < 11.5 for s in second.samples_ms) == bl.STORED_SAMPLES // 2  # equal weight for two processes
    lo, hi = process_range(second)
    assert lo * second.median_ms == pytest.approx(10.5) and hi * second.median_ms == pytest.approx(12.5)
    third = append_process(second, entry_from_samples([11.0] * 50, "call", None, env))
    assert sum(s == 11.0 for s in third.samples_ms) == pytest.approx(bl.STORED_SAMPLES / 3, abs=1)  # 1/3 each
    # it round-trips through the file, and the list keeps the most recent processes only
    e = third
    for i in range(10):
        e = append_process(e, entry_from_samples([20.0 + i], "call", None, env))
    assert len(e.extra[PROCESS_MEDIANS]) == 8 and e.extra[PROCESS_MEDIANS][-1] == 29.0
    assert Entry.from_json(json.loads(json.dumps(e.to_json()))).extra[PROCESS_MEDIANS] == e.extra[PROCESS_MEDIANS]


def test_appending_to_an_entry_of_another_environment_replaces_it():
    from pytest_llmcycle.storage.baseline import PROCESS_MEDIANS, append_process, entry_from_samples

    old = append_process(None, entry_from_samples([10.0] * 10, "call", None, {"threads": 2}))
    new = append_process(old, entry_from_samples([5.0] * 10, "call", None, {"threads": 1}))
    assert new.extra[PROCESS_MEDIANS] == [5.0] and new.samples_ms == (5.0,) * 10
    per_token = append_process(old, entry_from_samples([1.0] * 10, "token", None, {"threads": 2}))
    assert per_token.extra[PROCESS_MEDIANS] == [1.0]


def test_a_hand_edited_process_list_is_ignored_not_trusted():
    from pytest_llmcycle.storage.baseline import process_range

    for bad in ("fast", [10.0], [10.0, "x"], [0, -1.0], [True, 12.0]):
        e = Entry(10.0, 9.0, 11.0, 3, (9.0, 10.0, 11.0), extra={"process_medians_ms": bad})
        assert process_range(e) is None
