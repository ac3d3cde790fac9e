"""One judging rule: the same cases judged by a test (the plugin) and by ``llmcycle compare``.

Each case is a stored baseline entry and a current measurement with known samples (no clock:
the test hands ``llmcycle.record`` a synthetic Measurement, and its re-measure repeats it). The
plugin run writes a JSON report; ``llmcycle compare baseline.json report.json`` judges the same
pairs from the files. Both must give the outcome in the table, and so each other's.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

# Inline pytester runs drop modules first imported inside them; torch cannot be loaded twice.
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import torch  # noqa: F401,E402
from pytest_llmcycle import cli
from pytest_llmcycle.compare import compare, load
from pytest_llmcycle.storage.baseline import Entry, merge_into_file

KEY = "table"


def samples(median: float, n: int = 40, spread: float = 0.01) -> list[float]:
    """``n`` distinct samples (ms) around ``median``, symmetric, within +-spread."""
    return [round(median * (1 + spread * (2 * i / (n - 1) - 1)), 6) for i in range(n)]


BASE = samples(2.0)
#: name -> (baseline entry fields, current measurement fields, expected outcome)
CASES = {
    "unchanged": ({}, {}, "ok"),
    "twice_as_slow": ({}, {"samples": samples(4.0)}, "regressed"),
    "twice_as_fast": ({}, {"samples": samples(1.0)}, "improved"),
    "slower_within_threshold": ({}, {"samples": samples(2.1)}, "ok"),
    # the first case: compare used to say "ok" (it never judged counters)
    "flops_tenfold_same_time": ({"counters": {"flops": 1000}}, {"counters": {"flops": 10000}}, "regressed"),
    "flops_down_same_time": ({"counters": {"flops": 1000}}, {"counters": {"flops": 500}}, "improved"),
    # the second case: a per-call baseline against a per-token measurement
    "per_call_baseline_per_token_now": ({}, {"unit": "token", "samples": samples(0.1)}, "not comparable"),
    "other_torch": ({"env": {"torch": "0.0.1"}}, {}, "not comparable"),
    "no_baseline": (None, {}, "new"),
}


from pytest_llmcycle.engine.counts import stamp  # noqa: E402


def _entry(fields: dict) -> Entry:
    xs = np.sort(np.asarray(fields.get("samples", BASE), dtype=float))
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return Entry(
        float(med), float(q1), float(q3), len(xs), tuple(float(x) for x in xs), unit=fields.get("unit", "call"),
        env=fields.get("env", {}), counters=stamp(fields.get("counters", {})),  # counted by this version's rules
    )


TEST_FILE = '''
import json, os
import pytest
from pytest_llmcycle.measure.timing import Measurement

CASES = json.loads(os.environ["LLMCYCLE_CASES"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(llmcycle, name):
    current = CASES[name][1]
    m = Measurement(samples_ns=tuple(int(x * 1e6) for x in current.get("samples", {base})), unit=current.get("unit", "call"))
    llmcycle.record("s", m, remeasure=lambda: m, counters=current.get("counters"))
'''.replace("{base}", repr(BASE))


def test_a_test_and_compare_judge_every_case_alike(pytester, monkeypatch):
    baseline = pytester.path / "baselines.json"
    merge_into_file(
        baseline,
        [(KEY, f"test_cases.py::test_case[{name}]", "s", _entry(b)) for name, (b, _, _) in CASES.items() if b is not None],
    )
    pytester.makepyfile(test_cases=TEST_FILE)
    pytester.makeini(f"[pytest]\nllmcycle_device_key = {KEY}\nllmcycle_machine_check = false\n")
    monkeypatch.setenv("LLMCYCLE_CASES", json.dumps(CASES))
    report = pytester.path / "r.json"
    result = pytester.runpytest("--llmcycle-baseline", str(baseline), "--llmcycle-report", str(report))
    regressed = sum(1 for _, _, want in CASES.values() if want == "regressed")
    result.assert_outcomes(passed=len(CASES) - regressed, failed=regressed)

    by_plugin = {
        r["nodeid"].split("[")[1].rstrip("]"): r["outcome"]
        for r in json.loads(report.read_text())["results"]
        if r["kind"] == "stage"
    }
    by_compare = {r.nodeid.split("[")[1].rstrip("]"): r.outcome for r in compare(load(baseline), load(report))}
    expected = {name: want for name, (_, _, want) in CASES.items()}
    assert by_plugin == expected
    assert by_compare == expected

    # the command reads the same files the same way, and its exit code says "regressed"
    assert cli.main(["compare", str(baseline), str(report)]) == 1


def test_a_counter_regression_the_plugin_failed_is_a_regression_in_compare_too(pytester, monkeypatch):
    """The issue's story: a run failed on counters used to read "improved" in ``llmcycle compare``."""
    one = {"flops_tenfold_same_time": CASES["flops_tenfold_same_time"]}
    baseline = pytester.path / "baselines.json"
    merge_into_file(baseline, [(KEY, "test_cases.py::test_case[flops_tenfold_same_time]", "s", _entry(one["flops_tenfold_same_time"][0]))])
    pytester.makepyfile(test_cases=TEST_FILE)
    pytester.makeini(f"[pytest]\nllmcycle_device_key = {KEY}\nllmcycle_machine_check = false\n")
    monkeypatch.setenv("LLMCYCLE_CASES", json.dumps(one))
    report = pytester.path / "r.json"
    result = pytester.runpytest("--llmcycle-baseline", str(baseline), "--llmcycle-report", str(report))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*counter   flops: baseline 1 kFLOP, current 10 kFLOP (10x)*"])
    (row,) = compare(load(baseline), load(report))
    assert row.outcome == "regressed" and "flops" in row.verdict.reason
    assert row.verdict.decided_by == "counters"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_engine_alone_gives_the_table(name):
    """The pure rule on the same numbers (no plugin, no files) agrees with the table."""
    from pytest_llmcycle.engine import verdict as vd

    b, c, want = CASES[name]
    base = None if b is None else vd.Evidence(b.get("samples", BASE), b.get("unit", "call"), b.get("env", {}), b.get("counters", {}))
    cur = vd.Evidence(c.get("samples", BASE), c.get("unit", "call"), {"torch": torch.__version__}, c.get("counters", {}))
    case = vd.Case(base, cur, vd.Rules(0.10, 0.01, vd.CONFIRM_REMEASURE))
    v = vd.decide(case)
    if v.needs == vd.NEEDS_REMEASURE:  # the confirming measurement repeats the first
        v = vd.decide(vd.Case(base, cur, case.rules, remeasured=cur))
    assert not v.needs and v.outcome == want
