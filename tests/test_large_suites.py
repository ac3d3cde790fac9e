"""The shortcuts that keep a 2,000-stage run cheap give exactly what the plain paths give.

Each one is checked against the slow path it replaces: HTML escaping of plain strings, the
one-pass XML check of JUnit properties, samples kept as 8-byte doubles, and sample values held
once when a baseline file is loaded (and written back unchanged). Time and memory themselves are
measured in bench/scale_suite.py, not here.
"""
from __future__ import annotations

import json
from array import array
from dataclasses import replace

from hypothesis import given, settings, strategies as st

from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports.escape import html_text, xml_text
from pytest_llmcycle.reports.htmlpage import esc
from pytest_llmcycle.reports.outputs import junit_properties
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult
from pytest_llmcycle.storage.baseline import Baselines, entry_from_samples

#: plain text, the characters HTML and XML give a meaning to, and every kind of control
TEXT = st.text(st.sampled_from("ab 1.5 ms_-/[]µé€\\&<>\"'\n\r\t\x00\x1b\x7f\x85\u2028\u2029\ufffe\ud800"), max_size=12)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_esc_is_html_text(s):
    assert esc(s) == html_text(s)


def row(stage: str, reason: str, unit: str = "call", kind: str = "stage") -> StageResult:
    v = vd.Verdict(vd.NEW, 0.1, 0.1, reason=reason)
    return StageResult("t.py::test_a", stage, "cpu", v, kind=kind, unit=unit, median_ms=2.0, n=3, samples_ms=(1.0, 2.0, 3.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TEXT.filter(bool), TEXT, TEXT.filter(bool)), min_size=1, max_size=4))
def test_junit_properties_are_escaped_as_one_by_one(specs):
    rows = [row(stage, reason, unit) for stage, reason, unit in specs]
    rows.append(row("T = a + b", "", kind=CYCLE))
    got = junit_properties(rows)
    for k, v in got:  # nothing left that XML cannot hold
        assert xml_text(k) == k and (not isinstance(v, str) or xml_text(v) == v)
    names = [k for k, _ in got]
    for stage, reason, unit in specs:  # each text escaped as the one-by-one path escapes it
        assert f"llmcycle.{xml_text(stage)}.median_ms" in names
        assert (f"llmcycle.{xml_text(stage)}.reason", xml_text(reason)) in got or not reason
        assert (f"llmcycle.{xml_text(stage)}.unit", xml_text(f"ms/{unit}")) in got or unit == "call"
    assert any(n.endswith(".verdict") for n in names) and any(n.startswith("llmcycle.cycle.") for n in names)


def test_a_row_keeps_its_samples_as_doubles_and_reads_as_before():
    e = entry_from_samples([float(x) for x in range(1, 201)], "call", 5.0, {})
    r = StageResult("t.py::test_a", "prefill", "cpu", vd.Verdict(vd.OK, 0.1, 0.1), median_ms=e.median_ms, n=e.n,
                    samples_ms=e.samples_ms)
    assert type(r.samples_ms) is array and r.samples_ms.typecode == "d" and list(r.samples_ms) == list(e.samples_ms)
    assert r.to_dict()["samples_ms"] == list(e.samples_ms)
    assert StageResult.from_dict(r.to_dict()) == replace(r, baseline=None)
    cold = replace(r, kind=COLD, median_ms=5.0)
    assert cold.samples_ms is r.samples_ms  # the cold row shares its stage's samples, no copy
    assert r.timeline_ms == () and StageResult("t", "s", "cpu", r.verdict).samples_ms == ()


def test_a_loaded_file_holds_each_sample_value_once_and_writes_back_unchanged(tmp_path):
    b = Baselines(tmp_path / "b.json")
    for i in range(20):
        b.set_entry("cpu", f"t.py::test_{i}", "prefill", entry_from_samples([1.0 + (j % 7) / 100 for j in range(100)], "call", None, {}))
    b.set_entry_json("cpu", "t.py::test_int", "decode", {"median_ms": 2, "n": 3, "samples_ms": [1, 2, 3], "unit": "call"})
    text = b.dumps()
    (tmp_path / "b.json").write_text(text, encoding="utf-8")
    loaded = Baselines.load(tmp_path / "b.json")
    assert loaded.dumps() == text  # byte for byte, the hand-written int samples included
    tests = loaded.devices()["cpu"]["tests"]
    values = [x for i in range(20) for x in tests[f"t.py::test_{i}"]["prefill"]["samples_ms"]]
    assert len({id(x) for x in values}) == len(set(values)) == 7  # 7 distinct values, 7 objects
    assert [type(x) for x in tests["t.py::test_int"]["decode"]["samples_ms"]] == [int, int, int]
    assert loaded.entry("cpu", "t.py::test_3", "prefill") == b.entry("cpu", "t.py::test_3", "prefill")
    assert json.loads(text) == loaded.raw
