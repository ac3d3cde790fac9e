"""Nothing measured is lost, and a wrong call points at the user's line.

A test that measures and then fails keeps its stages in the table, the reports and JUnit,
marked as from a failed test, and ``--llmcycle-update`` does not write them (and says so).
A wrong argument names itself and the fix, with a traceback that ends in the test, not in
the plugin.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

# Inline pytester runs drop modules first imported inside them; torch cannot be loaded twice.
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import torch  # noqa: F401,E402

INI = "[pytest]\nllmcycle_device_key = ci\nllmcycle_machine_check = false\nllmcycle_budget = 0.05\n"

MEASURE_THEN_FAIL = '''
from pytest_llmcycle.measure.timing import Measurement


def test_measures_then_fails(llmcycle):
    m = Measurement(samples_ns=tuple(2_000_000 + 1000 * i for i in range(20)))
    llmcycle.record("forward", m, remeasure=lambda: m)
    llmcycle.record("decode", m, remeasure=lambda: m)
    assert False, "the model's output was wrong"


def test_passes(llmcycle):
    m = Measurement(samples_ns=tuple(1_000_000 + 1000 * i for i in range(20)))
    llmcycle.record("forward", m, remeasure=lambda: m)
'''


def test_a_failed_tests_stages_reach_the_table_the_reports_and_junit(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_x=MEASURE_THEN_FAIL)
    result = pytester.runpytest("--llmcycle-report", "r.json", "--llmcycle-report", "r.md", "--junitxml", "j.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the model's output was wrong*"])
    result.stdout.fnmatch_lines(["*test_measures_then_fails*forward*new (test failed)*"])

    rows = json.loads((pytester.path / "r.json").read_text())["results"]
    failed = {r["stage"] for r in rows if r["nodeid"].endswith("test_measures_then_fails") and r["test_failed"]}
    assert {"forward", "decode"} <= failed
    assert not any(r["test_failed"] for r in rows if r["nodeid"].endswith("test_passes"))
    assert "forward" in (pytester.path / "r.md").read_text() and "test failed" in (pytester.path / "r.md").read_text()

    case = next(c for c in ET.parse(pytester.path / "j.xml").iter("testcase") if c.get("name") == "test_measures_then_fails")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["llmcycle.forward.verdict"] == "new"
    assert props["llmcycle.forward.test_failed"] == "true"


def test_update_does_not_write_a_failed_tests_stages_and_says_so(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_x=MEASURE_THEN_FAIL)
    result = pytester.runpytest("--llmcycle-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*wrote 1 baseline entry*",
        "*NOT written to the baseline: the stages of 1 failed test(s) (test_x.py::test_measures_then_fails)*",
    ])
    stored = json.loads((pytester.path / ".llmcycle/baselines.json").read_text())["devices"]["ci"]["tests"]
    assert list(stored) == ["test_x.py::test_passes"]


def test_measure_given_a_result_instead_of_a_function_names_the_fix_at_the_users_line(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x='''
def model(ids):
    return sum(ids)


def test_forward(llmcycle):
    ids = [1, 2, 3]
    llmcycle.measure("forward", model(ids))
'''
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*llmcycle.measure(\"forward\", model(ids))*",
        "*TypeError: llmcycle.measure('forward', fn): fn must be a callable that runs the stage once, got int*"
        "pass e.g. `lambda: model(ids)`",
    ])
    out = result.stdout.str()
    assert "run/fixture.py" not in out  # the traceback ends at the user's line


def test_a_stage_name_with_control_characters_is_refused(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x='''
from pytest_llmcycle.measure.timing import Measurement


def test_newline(llmcycle):
    llmcycle.record("forward\\nok", Measurement(samples_ns=(1000, 1100, 1200)))


def test_escape(llmcycle):
    with llmcycle.stage("red\\x1b[31m"):
        pass
'''
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*ValueError: stage name 'forward\\nok' holds control or invisible characters ('\\n')*",
        "*ValueError: stage name 'red\\x1b[31m' holds control or invisible characters ('\\x1b')*",
    ])
    assert "run/fixture.py" not in result.stdout.str()
