"""The lean JSON report (schema 3): each sample written once, where nothing else holds it.

A stage row keeps this run's samples; its baseline leaves out the samples the baseline file
still holds, unless the run re-recorded the stage (the file no longer has the old ones); a cold
row carries no copy of its stage's samples; ``--llmcycle-report-samples`` writes them all.
Readers (``llmcycle compare``/``show``) take lean, full and schema-2 reports alike.

Rows are judged by the real engine on synthetic samples; the plugin stories run real pytest
sessions with the fake clock of test_plugin_flow. Size and speed at 2,000 stages are in
bench/scale_suite.py, not here.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import jsondoc
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult
from pytest_llmcycle.storage.baseline import Entry, entry_from_samples, round_sig

from test_plugin_flow import BASELINE, CONFTEST, INI

KEY = "cpu-test"
ENV = {"threads": 1}


def samples(center: float, n: int = 40) -> list[float]:
    return [center * (1 + 0.02 * (((i * 37) % n) / n - 0.5)) for i in range(n)]


def judged(nodeid: str, stage: str, base_ms: float | None, now_ms: float, **kw) -> StageResult:
    cur = entry_from_samples(samples(now_ms), "call", None, ENV)
    base = entry_from_samples(samples(base_ms), "call", None, ENV) if base_ms else None
    v = vd.judge(list(base.samples_ms) if base else None, list(cur.samples_ms), 0.10)
    return StageResult(nodeid, stage, KEY, v, median_ms=cur.median_ms, q1_ms=cur.q1_ms, q3_ms=cur.q3_ms, n=cur.n,
                       samples_ms=cur.samples_ms, baseline=base, env=ENV, **kw)


@pytest.fixture
def rows() -> list[StageResult]:
    same = judged("t.py::test_a", "prefill", 10.0, 10.0, cold_ms=40.0)
    cold = replace(same, kind=COLD, verdict=vd.Verdict("info", 0.1, 0.1), median_ms=40.0, baseline=None, n=1)
    rerecorded = judged("t.py::test_a", "decode", 1.0, 1.5, updated=True)  # the file now holds this run's samples
    cycle = StageResult("t.py::test_a", "T = prefill + decode", KEY, vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.0),
                        kind=CYCLE, median_ms=11.5, baseline=Entry(11.0, 11.0, 11.0, 1, (11.0,)))
    new = judged("t.py::test_b", "forward", None, 3.0)
    return [same, cold, rerecorded, cycle, new]


def by_label(doc: dict) -> dict:
    return {r["label"]: r for r in doc["results"]}


# ----------------------------------------------------------------------------- which rows carry samples


def test_a_lean_report_writes_each_sample_once(rows):
    doc = json.loads(jsondoc.render(rows, {"baseline_file": BASELINE}))
    assert doc["schema"] == 3 and doc["samples"] == "lean"
    got = by_label(doc)
    same, cold, rerecorded, cycle, new = (got[r.label] for r in rows)
    for row, r in ((same, rows[0]), (rerecorded, rows[2]), (new, rows[4])):
        assert row["samples_ms"] == list(r.samples_ms) and len(row["samples_ms"]) == r.n  # this run's: nowhere else
    # the baseline file still holds this entry: every field but its samples
    assert "samples_ms" not in same["baseline"]
    assert same["baseline"]["median_ms"] == round_sig(rows[0].baseline.median_ms) and same["baseline"]["n"] == 40
    assert same["baseline"]["env"] == ENV and same["baseline"]["unit"] == "call"
    # re-recorded: the file holds this run's samples now, so the old baseline's are only here
    assert rerecorded["updated"] and rerecorded["baseline"]["samples_ms"] == [round_sig(x) for x in rows[2].baseline.samples_ms]
    assert cycle["baseline"]["samples_ms"] == [11.0]  # a sum no file stores
    assert cold["samples_ms"] == [] and cold["median_ms"] == 40.0  # its stage row has the warm samples
    assert new["baseline"] is None


def test_report_samples_writes_every_copy(rows):
    doc = json.loads(jsondoc.render(rows, {}, all_samples=True))
    assert doc["schema"] == 3 and doc["samples"] == "all"
    got = by_label(doc)
    assert got["prefill"]["baseline"]["samples_ms"] == [round_sig(x) for x in rows[0].baseline.samples_ms]
    assert got["prefill (cold)"]["samples_ms"] == list(rows[0].samples_ms)
    unchanged = rows[:2]  # the common row pair: a stage judged against its stored baseline, and its cold call
    lean, full = len(jsondoc.render(unchanged, {})), len(jsondoc.render(unchanged, {}, all_samples=True))
    assert lean < 0.8 * full, (lean, full)


def test_lean_and_full_rows_differ_only_in_the_copies(rows):
    lean = by_label(json.loads(jsondoc.render(rows, {})))
    full = by_label(json.loads(jsondoc.render(rows, {}, all_samples=True)))
    for label, row in full.items():
        if row["baseline"] is not None and "samples_ms" not in lean[label]["baseline"]:
            del row["baseline"]["samples_ms"]
        if row["kind"] == COLD:
            row["samples_ms"] = []
        assert lean[label] == row, label


# ----------------------------------------------------------------------------- reading old and new reports


def as_schema_2(full_text: str) -> str:
    """A report as schema 2 wrote it: every sample, no ``samples`` field."""
    doc = json.loads(full_text)
    doc["schema"] = 2
    del doc["samples"]
    return json.dumps(doc)


def test_the_reader_takes_lean_full_and_schema_2_reports_alike(rows, tmp_path):
    lean = json.loads(jsondoc.render(rows, {}))
    full_text = jsondoc.render(rows, {}, all_samples=True)
    read = [jsondoc.stage_rows(doc, "r.json") for doc in (lean, json.loads(full_text), json.loads(as_schema_2(full_text)))]
    assert read[0] == read[1] == read[2]
    assert [(k, n, s) for k, n, s, _, _ in read[0]] == [(KEY, "t.py::test_a", "prefill"), (KEY, "t.py::test_a", "decode"),
                                                        (KEY, "t.py::test_b", "forward")]
    assert read[0][0][3]["samples_ms"] == list(rows[0].samples_ms)


def test_a_newer_schema_is_refused_with_the_fix(rows):
    doc = json.loads(jsondoc.render(rows, {}))
    doc["schema"] = 4
    with pytest.raises(jsondoc.ReportError, match="schema 4, newer than this pytest-llmcycle reads \\(3\\): upgrade"):
        jsondoc.stage_rows(doc, "r.json")


def test_compare_judges_a_lean_report_against_a_schema_2_report(tmp_path, capsys):
    main = tmp_path / "main.json"
    main.write_text(as_schema_2(jsondoc.render([judged("t.py::test_a", "prefill", 10.0, 10.0)], {}, all_samples=True)),
                    encoding="utf-8")
    pr = tmp_path / "pr.json"
    pr.write_text(jsondoc.render([judged("t.py::test_a", "prefill", 10.0, 13.0)], {}), encoding="utf-8")
    assert cli.main(["compare", str(main), str(pr), "--format", "json"]) == 1  # +30 %: regressed
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["outcome"] == vd.REGRESSED and row["median_ms"] == pytest.approx(13.0, rel=0.01)
    assert cli.main(["compare", str(pr), str(main)]) == 0
    capsys.readouterr()
    assert cli.main(["show", str(pr), "--format", "json"]) == 0
    assert "t.py::test_a" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a real run


ONE_TEST = """
def test_forward(llmcycle, clock):
    llmcycle.measure("forward", clock.work(2.0, "forward", cold_ms=9.0))
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_lean=ONE_TEST)
    return pytester


def report(pytester, *args) -> dict:
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-report", "r.json", *args)
    assert result.ret == 0, result.stdout.str()
    return json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))


def stored(pytester) -> dict:
    doc = json.loads((pytester.path / BASELINE).read_text(encoding="utf-8"))
    return doc["devices"]["ci-runner"]["tests"]["test_lean.py::test_forward"]["forward"]


def test_a_run_writes_a_lean_report_unless_told_otherwise(project):
    report(project, "--llmcycle-update")
    entry = stored(project)
    doc = report(project)  # a check run: the baseline file holds the baseline's samples
    stage = next(r for r in doc["results"] if r["kind"] == "stage")
    cold = next(r for r in doc["results"] if r["kind"] == COLD)
    assert doc["samples"] == "lean" and doc["meta"]["baseline_file"] == BASELINE
    assert "samples_ms" not in stage["baseline"] and stage["baseline"]["median_ms"] == entry["median_ms"]
    assert stage["samples_ms"] and cold["samples_ms"] == [] and cold["median_ms"] == pytest.approx(9.0)

    doc = report(project, "--llmcycle-report-samples")
    stage = next(r for r in doc["results"] if r["kind"] == "stage")
    assert doc["samples"] == "all" and stage["baseline"]["samples_ms"] == entry["samples_ms"]
    assert next(r for r in doc["results"] if r["kind"] == COLD)["samples_ms"] == stage["samples_ms"]

    doc = report(project, "--llmcycle-update", "--llmcycle-update-all")  # re-recorded: the old samples leave the file
    stage = next(r for r in doc["results"] if r["kind"] == "stage")
    assert stage["updated"] and stage["baseline"]["samples_ms"] == entry["samples_ms"]


def test_the_ini_option_writes_every_sample(project):
    project.makeini(INI + "llmcycle_report_samples = true\n")
    report(project, "--llmcycle-update")
    doc = report(project)
    assert doc["samples"] == "all" and next(r for r in doc["results"] if r["kind"] == "stage")["baseline"]["samples_ms"]
