"""Report files: JSON for tools, Markdown for a pull request, HTML for people; JUnit properties.

Renderers are fed StageResult records built from synthetic samples and real verdicts, so
nothing here times anything; one pytester story checks the files a real run writes.
"""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy  # noqa: F401 - inline pytester runs drop modules first imported inside them;
import pytest
import torch  # noqa: F401 - torch and numpy cannot load twice in one process

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmcycle.reports import terminal as report, htmlpage as report_html, jsondoc as report_json, markdown as report_markdown
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.storage.baseline import Entry
from pytest_llmcycle.reports.outputs import junit_properties
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult
from pytest_llmcycle.storage.baseline import entry_from_samples

META = {"device_key": "cpu-test", "threads": 1, "torch": "9.9", "python": "3.x", "settings": {"threshold": 0.1}}


def samples(center: float, n: int = 40, spread: float = 0.01) -> list[float]:
    return [center * (1 + spread * ((i * 37) % n - n / 2) / n) for i in range(n)]


def result(nodeid: str, stage: str, base: list[float] | None, cur: list[float], unit: str = "call", kind: str = "stage") -> StageResult:
    e = entry_from_samples(cur, unit, None, {"threads": 1})
    b = entry_from_samples(base, unit, None, {"threads": 1}) if base else None
    v = vd.judge(list(b.samples_ms) if b else None, cur, 0.10, 0.01)
    return StageResult(
        nodeid=nodeid, stage=stage, device_key="cpu-test", verdict=v, kind=kind, unit=unit,
        median_ms=e.median_ms, q1_ms=e.q1_ms, q3_ms=e.q3_ms, n=e.n, baseline=b, samples_ms=e.samples_ms,
    )


@pytest.fixture
def rows() -> list[StageResult]:
    ok = result("tests/test_a.py::test_fast", "prefill", samples(10), samples(10.05))
    slow = result("tests/test_b.py::test_gen[a|b]", "decode", samples(1.0), samples(1.5), unit="token")
    new = result("tests/test_c.py::test_new", "backward", None, samples(3.0))
    cold = StageResult("tests/test_a.py::test_fast", "prefill", "cpu-test", vd.Verdict("info", 0.1, 0.1), kind=COLD,
                       median_ms=40.0, n=1, samples_ms=ok.samples_ms)
    cyc = StageResult("tests/test_b.py::test_gen[a|b]", "T = decode", "cpu-test", vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.0),
                      kind=CYCLE, median_ms=1.0, baseline=Entry(1.0, 1.0, 1.0, 1, (1.0,)))
    return [ok, cold, slow, cyc, new]


# ----------------------------------------------------------------------------- JSON


def test_json_report_round_trips_every_row_with_samples_and_baseline(rows):
    doc = json.loads(report_json.render(rows, META))
    assert doc["format"] == "pytest-llmcycle-report" and doc["schema"] == 3 and doc["samples"] == "lean"
    assert doc["meta"]["device_key"] == "cpu-test"
    assert [r["stage"] for r in doc["results"]] == [r.stage for r in rows]
    slow = next(r for r in doc["results"] if r["stage"] == "decode")
    assert slow["outcome"] == vd.REGRESSED and slow["unit"] == "token"
    assert slow["verdict"]["change"] == pytest.approx(rows[2].verdict.change)
    # lean: the baseline's samples stay in the baseline file (tests/test_lean_report.py)
    assert "samples_ms" not in slow["baseline"] and slow["baseline"]["median_ms"] == pytest.approx(rows[2].baseline.median_ms, rel=1e-3)
    assert len(slow["samples_ms"]) == rows[2].n
    assert next(r for r in doc["results"] if r["stage"] == "backward")["baseline"] is None


def test_json_report_is_strict_json_even_with_non_finite_numbers(rows):
    odd = rows[0].__class__(**{**rows[0].__dict__, "verdict": vd.Verdict(vd.OK, 0.1, math.inf, ratio=math.nan)})
    text = report_json.render([odd], META)
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["results"][0]["verdict"]["effective_threshold"] is None


# ----------------------------------------------------------------------------- Markdown


def md_rows(text: str) -> list[list[str]]:
    lines = text[text.index("\n| "):].strip().split("\n\n")[0].splitlines()  # the first table
    lines = [ln for ln in lines if not ln.startswith("|---")]
    # split on unescaped pipes only
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_markdown_table_puts_regressions_first_and_has_one_row_per_record(rows):
    text = report_markdown.render(rows, META)
    table = md_rows(text)
    assert table[0] == report_markdown.HEADERS
    body = table[1:]
    assert len(body) == len([r for r in rows if r.kind != COLD])  # first calls are never gated: left out
    assert body[0][1] == "`tests/test_b.py::test_gen[a\\|b]`"  # the regressed test, its pipe escaped
    assert "**regressed**" in body[0][6] and body[0][5] == "+50.0%"
    assert body[0][3].endswith("/token") and body[0][4].endswith("/token")
    assert text.splitlines()[0].startswith("### ❌") and "1 regressed" in text.splitlines()[0]
    assert "pytest 'tests/test_b.py::test_gen[a|b]' --llmcycle-update" in text


def test_markdown_sparkline_only_on_stage_rows_and_spans_the_baseline(rows):
    """The cycle row has no samples of its own; cold rows are not in the table."""
    body = md_rows(report_markdown.render(rows, META))[1:]
    by = {(r[1], r[2]): r for r in body}
    decode = by[("`tests/test_b.py::test_gen[a\\|b]`", "decode")][7]
    blocks = decode.strip("`")[:10]
    assert len(blocks) == 10 and set(blocks) <= set(report.BLOCKS + " ")
    # current samples sit at ~1.5 ms on a 1.0..1.5 range that includes the baseline: upper bins only
    assert blocks[:5].strip() == "" and blocks[-1] != " "
    assert ("`tests/test_a.py::test_fast`", "prefill (cold)") not in by
    assert by[("`tests/test_b.py::test_gen[a\\|b]`", "cycle T = decode")][7] == ""


def test_markdown_environment_is_a_collapsible_block(rows):
    text = report_markdown.render(rows, META)
    details = text[text.index("<details><summary>Environment</summary>"):]
    assert "| device key | cpu-test |" in details and "| torch | 9.9 |" in details
    assert "| setting threshold | 0.1 |" in details and details.rstrip().endswith("</details>")


_cell = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(_cell.filter(lambda h: h and h == h.strip()), min_size=k, max_size=k),
            st.lists(st.lists(_cell, min_size=k, max_size=k), max_size=6),
        )
    )
)
def test_the_text_table_is_tabulates_simple_layout(table):
    tabulate = pytest.importorskip("tabulate").tabulate
    headers, cells = table
    assert report.simple_table(cells, headers) == tabulate(cells, headers=headers, tablefmt="simple", disable_numparse=True)


def test_the_terminal_table_of_real_rows_is_tabulates_too(rows):
    tabulate = pytest.importorskip("tabulate").tabulate
    numbered, texts = report.notes(rows)  # issue 11: a note column and the notes below when a row has one
    headers = report.NOTE_HEADERS if texts else report.HEADERS
    want = tabulate(report.table_rows(rows, numbered if texts else None), headers=headers, tablefmt="simple", disable_numparse=True)
    assert report.terminal_table(rows).splitlines()[: len(want.splitlines())] == want.splitlines()


def test_sparkline_is_a_histogram():
    assert report.sparkline([1, 1, 1, 2], 1, 2, bins=2) == "█▃"  # 1/3 of the top bin's height
    assert report.sparkline([5, 5], bins=4) == "█"
    assert report.sparkline([1, 3], 0, 4, bins=4) == " █ █"
    assert report.trend_sparkline([1, 2, 3]) == "▁▅█"


# ----------------------------------------------------------------------------- HTML


class Checker(HTMLParser):
    """Well-formedness (every non-void element closed in order) and no external references."""

    VOID = {"meta", "input", "br", "img", "hr", "link", "circle", "line", "rect", "polyline", "polygon", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action") or (v and re.search(r"(https?:)?//", v)):
                self.errors.append(f"external reference {k}={v!r} on <{tag}>")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(text: str) -> Checker:
    assert text.startswith("<!DOCTYPE html>")
    c = Checker()
    c.feed(text)
    c.close()
    assert not c.errors, c.errors[:5]
    assert c.stack == [], c.stack
    assert not re.search(r"https?://|@import|url\(", text), "the report must not load anything"
    return c


def test_html_report_is_self_contained_with_one_strip_plot_per_stage(rows):
    text = report_html.render(rows, META)
    c = check_html(text)
    sections = [a for t, a in c.tags if t == "section"]
    assert len(sections) == 3  # one per test
    assert sum(1 for t, _ in c.tags if t == "svg") == 3  # one strip plot per measured stage
    assert sorted(a["data-ok"] for a in sections) == ["0", "1", "1"]
    assert text.index("test_gen[a|b]") < text.index("test_fast")  # regressed test first
    assert "fails above" in text  # the threshold line of a stage with a baseline
    assert "<script>" in text and "<style>" in text


def test_html_shows_the_decode_timeline_and_the_trend_when_given(rows):
    from dataclasses import dataclass

    from pytest_llmcycle.storage.history import Point

    @dataclass(frozen=True)
    class WithTimeline(StageResult):  # a record that kept the per-position decode latency
        timeline_ms: tuple = ()

    decode = WithTimeline(**{**rows[2].__dict__, "timeline_ms": (1.4, 1.5, 1.6, 1.5), "counters": {"flops": 2e6}})
    pts = [Point(i, f"2026-01-0{i}T00:00", "abc", m, m * 0.9, m * 1.1, 40, "ok", "token", "cpu-test") for i, m in enumerate([1.0, 1.1, 1.5], 1)]
    text = report_html.render([decode], META, {(decode.nodeid, "decode"): pts})
    c = check_html(text)
    assert sum(1 for t, _ in c.tags if t == "svg") == 3  # strip plot, timeline, trend
    assert "latency of each generated token" in text and "over the last 3 runs" in text
    assert "flops 2 MFLOP/token" in text  # deterministic counters next to the verdict
    polylines = [a["points"] for t, a in c.tags if t == "polyline"]
    assert [len(p.split()) for p in polylines] == [4, 3]


# ----------------------------------------------------------------------------- JUnit


def test_junit_values_are_rounded_like_the_baseline_file():
    from pytest_llmcycle.reports import outputs
    from pytest_llmcycle.storage.baseline import round_sig

    for x in (12.345678, 0.00012345678, 98765.4321, 1.0, 0.0, math.inf):
        assert outputs._round(x) == round_sig(x)
    assert outputs._round(None) is None


def test_junit_properties_name_each_stage(rows):
    props = dict(junit_properties(rows))
    assert props["llmcycle.decode.verdict"] == vd.REGRESSED
    assert props["llmcycle.decode.change"] == pytest.approx(rows[2].verdict.change, abs=1e-4)
    assert props["llmcycle.decode.unit"] == "ms/token"
    assert props["llmcycle.prefill.baseline_ms"] == pytest.approx(rows[0].baseline.median_ms, rel=1e-3)
    assert props["llmcycle.prefill.cold_ms"] == 40.0
    assert props["llmcycle.cycle.terms"] == "T = decode"
    assert "llmcycle.backward.baseline_ms" not in props  # new: nothing to compare with


# ----------------------------------------------------------------------------- a real run

TIMED = """
def test_sum(llmcycle):
    llmcycle.measure("sum", lambda: sum(range(3000)))
    for _ in range(10):
        with llmcycle.stage("block"):
            sum(range(3000))
"""


def test_a_run_writes_every_report_junit_and_the_job_summary(pytester, monkeypatch):
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(TIMED)
    opts = ["-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-threshold", "0.5"]
    pytester.runpytest(*opts, "--llmcycle-update").assert_outcomes(passed=1)
    result = pytester.runpytest(
        *opts, "--junitxml", "out/junit.xml",
        "--llmcycle-report", "out/r.md", "--llmcycle-report", "out/r.json", "--llmcycle-report", "out/r.html",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmcycle: wrote markdown report *r.md", "llmcycle: wrote json report *r.json", "llmcycle: wrote html report *r.html"])
    out = pytester.path / "out"
    doc = json.loads((out / "r.json").read_text(encoding="utf-8"))
    stages = {(r["stage"], r["kind"]) for r in doc["results"]}
    assert {("sum", "stage"), ("block", "stage"), ("sum", "cold")} <= stages
    assert all(r["baseline"] for r in doc["results"] if r["kind"] == "stage")
    assert doc["meta"]["device_key"] and doc["meta"]["settings"]["threshold"] == 0.5
    md = (out / "r.md").read_text(encoding="utf-8")
    assert "| `test_a_run_writes_every_report_junit_and_the_job_summary.py::test_sum` | sum |" in md
    check_html((out / "r.html").read_text(encoding="utf-8"))
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n") and text.count("### ") == 2  # both runs appended
    props = {p.get("name"): p.get("value") for p in ET.parse(out / "junit.xml").iter("property")}
    assert props["llmcycle.sum.verdict"] in vd.OUTCOMES and float(props["llmcycle.sum.median_ms"]) > 0
    assert float(props["llmcycle.sum.baseline_ms"]) > 0 and "llmcycle.sum.change" in props


def test_no_step_summary_when_turned_off_or_outside_github(pytester, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makeini("[pytest]\nllmcycle_step_summary = false\n")
    pytester.makepyfile(TIMED)
    pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05").assert_outcomes(passed=1)
    assert not summary.exists()


def test_unknown_report_extension_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--llmcycle-report", "out.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmcycle-report*out.txt: unknown report format '.txt'*.html*.json*.md*"])


def test_reports_from_ini_are_relative_to_the_rootdir_and_written_without_timing_tests(pytester):
    pytester.makeini("[pytest]\nllmcycle_report = reports/latency.json\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    sub = pytester.mkdir("sub")
    monkey = pytest.MonkeyPatch()
    monkey.chdir(sub)
    try:
        pytester.runpytest("--rootdir", str(pytester.path), str(pytester.path)).assert_outcomes(passed=1)
    finally:
        monkey.undo()
    doc = json.loads((pytester.path / "reports" / "latency.json").read_text(encoding="utf-8"))
    assert doc["results"] == [] and "device_key" not in doc["meta"]


def test_output_options_cost_nothing_in_a_run_without_timing_tests(tmp_path):
    """--llmcycle-history/--llmcycle-tensorboard on a plain suite: no numpy, no files."""
    import subprocess
    import sys

    (tmp_path / "test_plain.py").write_text("def test_x():\n    pass\n", encoding="utf-8")
    code = (
        "import sys, pytest; rc = pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'pytest_llmcycle.plugin', "
        "'test_plain.py', '--llmcycle-history', 'h.sqlite', '--llmcycle-tensorboard', 'tb']); "
        "print(rc, sorted(m for m in ('numpy', 'torch', 'tabulate', 'sqlite3') if m in sys.modules))"
    )
    env = {**__import__("os").environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_plain.py"]


def test_outputs_kinds_are_the_results_kinds():
    from pytest_llmcycle.reports import outputs
    from pytest_llmcycle.run import results

    assert (outputs.COLD, outputs.CYCLE) == (results.COLD, results.CYCLE)


def test_under_xdist_the_controller_writes_one_report_with_every_workers_rows(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_sum(llmcycle, n):
            llmcycle.measure("sum", lambda: sum(range(2000 * n)))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--llmcycle-budget", "0.05",
                                "--llmcycle-report", "r.json", "--junitxml", "j.xml")
    result.assert_outcomes(passed=4)
    doc = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert sorted({r["nodeid"].split("::")[1] for r in doc["results"] if r["kind"] == "stage"}) == [
        f"test_sum[{n}]" for n in (1, 2, 3, 4)
    ]
    props = [p.get("name") for p in ET.parse(pytester.path / "j.xml").iter("property")]
    assert props.count("llmcycle.sum.verdict") == 4  # JUnit properties come back from the workers


def test_a_long_markdown_table_keeps_the_regressions_and_cuts_the_passing_tail(rows):
    many = rows + [result(f"tests/test_z.py::test_{i}", "prefill", samples(10), samples(10)) for i in range(30)]
    text = report_markdown.table(many, max_rows=5)
    body = [ln for ln in text.splitlines() if ln.startswith("| ") and "test_" in ln]
    assert len(body) == 5 and "**regressed**" in body[0]
    assert f"... and {len(many) - 1 - 5} more row(s) (" in text  # one cold row is never listed
    assert text.rstrip().endswith("in the JSON and HTML reports")
