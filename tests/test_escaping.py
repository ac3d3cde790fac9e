"""Nothing injected: a string from a file or a test id is shown where it goes, never obeyed.

Node ids, device keys, reasons, units and environment values reach a PR comment (Markdown),
an HTML page, a terminal and JUnit XML. Each of them gets the payloads an attacker (or an odd
parametrize id) would try, and each output is parsed back the way its reader parses it.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy  # noqa: F401 - numpy and torch cannot load twice in one process (inline pytester runs)
import pytest
import torch  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import escape
from pytest_llmcycle.reports import htmlpage, jsondoc, markdown
from pytest_llmcycle.reports.outputs import junit_properties
from pytest_llmcycle.reports.terminal import accept_command, failure_message, notes, simple_table, terminal_table
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult
from pytest_llmcycle.storage.baseline import Baselines, Entry

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(1)</script>",
    "[link](javascript:alert(1))",
    "![x](https://example.invalid/x.png)",
    "<!-- hidden -->",
    "&lt;b&gt; & <b>bold</b>",
    "**bold** _em_ `code` ~~gone~~",
    "back\\|slash\\",
    "a\nforged | row | ok",
    "\x1b]0;retitled\x07",  # OSC: sets the terminal's title
    "\x1b[2J\x1b[31mred",  # CSI: clears the screen, colours
    "\x9b31mC1 CSI\x9d0;osc\x07",
    "nul\x00del\x7fcr\rtab\t",
    "line\u2028sep\u2029para",
]
ALL = " ".join(PAYLOADS)
#: what a terminal must never receive from a value: C0 (but the table's own newlines), DEL, C1
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def hostile_rows(text: str) -> list[StageResult]:
    base = Entry(1.0, 0.9, 1.1, 20, tuple(1.0 + 0.01 * i for i in range(20)), unit=text, env={"torch": text})
    samples = tuple(1.5 + 0.01 * i for i in range(20))
    bad = vd.Verdict(vd.REGRESSED, 0.1, 0.1, ratio=1.5, p_value=0.001, reason=text)
    odd = vd.Verdict(vd.NOT_COMPARABLE, 0.1, 0.1, reason=f"torch {text} vs 2.1")
    return [
        StageResult(f"tests/test_x.py::test_y[{text}]", text, text, bad, unit=text, median_ms=1.5, q1_ms=1.4, q3_ms=1.6,
                    n=20, baseline=base, samples_ms=samples, counters={text: 3}),
        StageResult(f"tests/test_x.py::test_y[{text}]", text, text, odd, median_ms=2.0, n=20, samples_ms=samples),
        StageResult(f"tests/test_x.py::test_z[{text}]", f"{text} + decode", text, vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.0),
                    kind=CYCLE, median_ms=3.0, baseline=Entry(3.0, 3.0, 3.0, 1, (3.0,))),
        StageResult(f"tests/test_x.py::test_y[{text}]", text, text, vd.Verdict("info", 0.1, 0.1), kind=COLD, median_ms=9.0, n=1),
    ]


def hostile_meta(text: str) -> dict:
    return {"device_key": text, "device": text, "torch": text, "commit": text, "baseline_file": text,
            "settings": {text: text, "threshold": 0.1}, "created": "2026-01-01T00:00:00"}


# ----------------------------------------------------------------------------- Markdown


class Tags(HTMLParser):
    """Every tag and attribute, and each table cell's text, of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.scripts: list[str] = []
        self._cell: list[str] | None = None
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_script:
            self.scripts[-1] += data


def gfm(text: str) -> Tags:
    """Render Markdown the way a PR comment is rendered (tables, strikethrough, raw HTML on)."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    t = Tags()
    t.feed(md.render(text))
    return t


def shown(text: str) -> str:
    """What a Markdown cell shows for ``text``: one line, controls as visible escapes."""
    return escape.visible(text.replace("\r", " ").replace("\n", " ")).strip()


MARKDOWN_TAGS = {"h3", "p", "code", "table", "thead", "tbody", "tr", "th", "td", "strong", "pre", "details", "summary", "ul", "li"}


@pytest.mark.parametrize("text", PAYLOADS + [ALL], ids=range(len(PAYLOADS) + 1))
def test_markdown_shows_every_payload_as_text(text):
    out = markdown.render(hostile_rows(text), hostile_meta(text))
    page = gfm(out)
    tags = {t for t, _ in page.tags}
    assert tags <= MARKDOWN_TAGS, f"tags injected: {tags - MARKDOWN_TAGS}"
    assert not any(k.startswith("on") or k in ("href", "src") for _, a in page.tags for k in a)
    table = page.rows[: 1 + 3]  # the header and the three gated rows (cold calls are left out)
    assert table[0] == markdown.HEADERS
    assert all(len(r) == len(markdown.HEADERS) for r in table), "a cell separator got through"
    regressed = table[1]
    assert regressed[1] == shown(f"tests/test_x.py::test_y[{text}]").replace("`", "'")  # the code cell: exactly the id
    assert regressed[2] == shown(text)  # the stage: exactly its name
    assert regressed[3].endswith(shown("/" + text)) and regressed[6] == "regressed"
    assert table[3][2] == shown(f"cycle {text} + decode")
    env = {r[0]: r[1] for r in page.rows if len(r) == 2}
    assert env["device key"] == env["torch"] == env["commit"] == shown(text)
    assert env[shown(f"setting {text}")] == shown(text)
    assert not RAW_CONTROL.search(out.replace("\n", " ")), "a control character reached the comment"


def test_markdown_cells_and_code_spans_keep_the_table_shape():
    # the GFM rule: a pipe right after a backslash belongs to the cell, and that backslash is dropped
    for text in ["a|b", "a\\|b", "a\\\\|b", "\\", "|", "`|`", "x\\"]:
        row = gfm("| a | b |\n|---|---|\n| " + markdown.cell(text) + " | " + markdown.code(text) + " |\n").rows[1]
        assert row == [text, text.replace("`", "'")], text


def test_the_accept_command_block_is_one_line():
    rows = hostile_rows("x\n```\n<img src=x onerror=alert(1)>")
    out = markdown.render(rows, {})
    fence = out[out.index("```\n") + 4:]
    assert fence.index("\n```") == fence.index("\n")  # the command is one line, then the fence closes
    assert "<img" not in {t for t, _ in gfm(out).tags}


# ----------------------------------------------------------------------------- HTML


HTML_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "label", "input", "details", "summary",
             "table", "tr", "th", "td", "section", "span", "br", "figure", "figcaption", "svg", "text", "rect", "line", "path",
             "polyline", "polygon", "circle", "script"}


@pytest.mark.parametrize("text", PAYLOADS + [ALL], ids=range(len(PAYLOADS) + 1))
def test_html_shows_every_payload_as_text(text):
    from pytest_llmcycle.storage.history import Point

    rows = hostile_rows(text)
    pts = [Point(i, text, text, 1.0 + i, 0.9, 1.1, 20, text, text, text) for i in range(3)]
    out = htmlpage.render(rows, hostile_meta(text), {(rows[0].nodeid, rows[0].stage): pts}, title=text)
    page = Tags()
    page.feed(out)
    assert {t for t, _ in page.tags} <= HTML_TAGS
    assert [t for t, _ in page.tags].count("script") == 1 and page.scripts == [htmlpage.JS]
    assert not any(k.startswith("on") or k in ("href", "src") for _, a in page.tags for k in a)
    assert not RAW_CONTROL.search(out.replace("\n", " ").replace("\t", " ").replace("\r", " "))
    out.encode("utf-8")  # writable as the report file


# ----------------------------------------------------------------------------- terminal


@pytest.mark.parametrize("text", PAYLOADS + [ALL], ids=range(len(PAYLOADS) + 1))
def test_the_terminal_table_and_failure_message_show_controls_escaped(text):
    rows = hostile_rows(text)
    table = terminal_table(rows)
    assert not RAW_CONTROL.search(table)
    # header, rule, one line per row, one per note (issue 11: the reasons of not-judged rows): nothing forged
    assert len(table.splitlines()) == len(rows) + 2 + len(notes(rows)[1])
    message = failure_message(rows[:1])
    assert not RAW_CONTROL.search(message)
    assert escape.visible(text) in message and message.count("\n") == failure_message(hostile_rows("x")[:1]).count("\n")
    assert "\n" not in accept_command([rows[0].nodeid])


def test_visible_names_each_control_and_keeps_everything_else():
    assert escape.visible("a\x1b]0;t\x07\n\t\r\x9b\x7f\u2028") == "a\\x1b]0;t\\x07\\n\\t\\r\\x9b\\x7f\\u2028"
    assert escape.visible("é 中 \\n ‮ <b>") == "é 中 \\n ‮ <b>"  # backslashes and printable text untouched
    assert escape.visible("a\nb\x1b", keep="\n") == "a\nb\\x1b"
    assert escape.visible("\ud800") == "\\ud800"  # a lone surrogate (an undecodable file name) cannot be printed


# ----------------------------------------------------------------------------- JUnit


JUNIT_TEST = """
import numpy, torch  # noqa: F401
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports.outputs import junit_properties
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult

TEXT = {text!r}


def test_props(record_property):
    ok = vd.Verdict("ok", 0.1, 0.1, ratio=1.0)
    rows = [StageResult("t::x", TEXT, "cpu", ok, median_ms=1.0, unit=TEXT), StageResult("t::x", TEXT, "cpu", ok, kind=COLD, median_ms=2.0),
            StageResult("t::x", TEXT, "cpu", ok, kind=CYCLE, median_ms=3.0)]
    for name, value in junit_properties(rows):
        record_property(name, value)
"""


def test_junit_xml_stays_parseable_with_controls_in_names(pytester):
    pytester.makepyfile(JUNIT_TEST.format(text=ALL))
    pytester.runpytest("-p", "no:cacheprovider", "--junitxml", "j.xml").assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "j.xml").iter("property")}
    shown_name = escape.xml_text(ALL)
    assert props[f"llmcycle.{shown_name}.median_ms"] == "1.0" and props[f"llmcycle.{shown_name}.cold_ms"] == "2.0"
    assert props["llmcycle.cycle.terms"] == shown_name and props[f"llmcycle.{shown_name}.unit"] == f"ms/{shown_name}"


def test_junit_names_and_values_hold_only_xml_characters():
    rows = hostile_rows(ALL + "\ufffe\ud800")
    for name, value in junit_properties(rows):
        for s in (name, value if isinstance(value, str) else ""):
            assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", s)


# ----------------------------------------------------------------------------- CLI


def baseline_file(path, text: str, median: float = 1.0) -> None:
    b = Baselines(path)
    # quartiles and samples that fit the median: the loader checks them (issue 15)
    e = Entry(median, median * 0.995, median * 1.005, 20, tuple(median * (1 + 0.001 * (i - 10)) for i in range(20)), env={"torch": text, "threads": 1})
    b.set_entry(text, f"tests/t.py::test_a[{text}]", text, e)
    b.set_entry("cpu-plain", f"tests/t.py::test_b[{text}]", "forward", e)
    path.write_text(b.dumps(), encoding="utf-8")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_cli_show_and_compare_print_file_values_escaped(tmp_path, capsys, fmt):
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    baseline_file(old, ALL)
    baseline_file(new, ALL, median=2.0)
    baseline_file(other, "other\x1b[2J")
    for argv in (["show", old], ["compare", old, new], ["compare", old, other]):
        code, out, err = run(capsys, *argv, "--format", fmt)
        assert code in (0, 1), err
        assert not RAW_CONTROL.search(out + err), argv
        if fmt == "markdown":
            tags = {t for t, _ in gfm(out).tags}
            assert tags <= MARKDOWN_TAGS, tags
        if fmt == "json":
            json.loads(out)


def test_cli_prune_prints_removed_ids_escaped(tmp_path, capsys):
    f = tmp_path / "b.json"
    baseline_file(f, ALL)
    code, out, err = run(capsys, "prune", f, "--keep", "tests/t.py::test_other", "--dry-run")
    assert code == 0 and "would remove" in out
    assert not RAW_CONTROL.search(out.replace("\n", " ") + err)


def test_cli_errors_quoting_a_file_are_escaped(tmp_path, capsys):
    f = tmp_path / "x\x1b]0;t\x07.json"
    code, out, err = run(capsys, "show", f)
    assert code == 2 and "\\x1b]0;t\\x07" in err and not RAW_CONTROL.search(err.replace("\n", " "))


# ----------------------------------------------------------------------------- fuzz

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_any_text = st.text(max_size=12)  # with lone surrogates: what a file name that is not UTF-8 becomes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodeid=_any_text, stage=_any_text.filter(str.strip), key=_any_text, reason=_any_text, value=_any_text)
def test_fuzz_every_renderer_escapes_any_text(nodeid, stage, key, reason, value):
    v = vd.Verdict(vd.REGRESSED, 0.1, 0.1, ratio=1.5, p_value=0.01, reason=reason)
    rows = [StageResult(nodeid, stage, key, v, unit=value or "call", median_ms=1.5, n=3, samples_ms=(1.4, 1.5, 1.6),
                        baseline=Entry(1.0, 0.9, 1.1, 3, (0.9, 1.0, 1.1)))]
    meta = {"device_key": key, "torch": value, "settings": {value: value}}
    md = markdown.render(rows, meta)
    assert not RAW_CONTROL.search(md.replace("\n", " "))
    assert {t for t, _ in gfm(md).tags} <= MARKDOWN_TAGS
    md.encode("utf-8")  # writable as the report file and the job summary
    table = terminal_table(rows)
    assert not RAW_CONTROL.search(table) and len(table.splitlines()) == 3
    assert not RAW_CONTROL.search(failure_message(rows))
    page = htmlpage.render(rows, meta)
    page.encode("utf-8")
    parsed = Tags()
    parsed.feed(page)
    assert {t for t, _ in parsed.tags} <= HTML_TAGS
    for name, val in junit_properties(rows):
        assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", name + (val if isinstance(val, str) else ""))


@settings(max_examples=60, deadline=None)
@given(nodeid=_any_text, stage=_any_text, key=_any_text, value=_any_text)
def test_fuzz_the_json_report_round_trips_any_text_as_strict_ascii_json(nodeid, stage, key, value):
    v = vd.Verdict(vd.OK, 0.1, 0.1, ratio=1.0, reason=value)
    rows = [StageResult(nodeid, stage, key, v, unit=value, median_ms=1.0, n=1, samples_ms=(1.0,), env={value: value})]
    text = jsondoc.render(rows, {"device_key": key, value: value})
    assert text.isascii()  # every control character and surrogate as a JSON escape
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    got = doc["results"][0]
    assert (got["nodeid"], got["stage"], got["device_key"], got["unit"]) == (nodeid, stage, key, value)
    assert got["verdict"]["reason"] == value and got["env"] == {value: value} and doc["meta"][value] == value


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_text.filter(str.strip), nodeid=_text, stage=_text.filter(str.strip), torch_version=_text)
def test_fuzz_cli_show_and_compare_of_a_json_report_print_nothing_raw(tmp_path_factory, capsys, key, nodeid, stage, torch_version):
    folder = tmp_path_factory.mktemp("r")
    rows = [StageResult(f"t.py::{nodeid}", stage, key, vd.Verdict(vd.NEW, 0.1, 0.1), median_ms=1.0, q1_ms=1.0, q3_ms=1.0, n=3,
                        samples_ms=(0.9, 1.0, 1.1), env={"torch": torch_version, "threads": 1})]
    report = folder / "r.json"
    report.write_text(jsondoc.render(rows, {"device_key": key}), encoding="utf-8")
    for argv in (["show", report], ["show", report, "--format", "markdown"], ["compare", report, report]):
        code, out, err = run(capsys, *argv)
        assert code in (0, 1, 2)
        assert not RAW_CONTROL.search(out.replace("\n", " ") + err.replace("\n", " ")), (argv, out, err)
        if "markdown" in argv:
            assert {t for t, _ in gfm(out).tags} <= MARKDOWN_TAGS


def test_the_table_layout_is_unchanged_for_printable_text():
    rows = [["a", "b c"], ["long cell", "x"]]
    assert simple_table(rows, ["h1", "h2"]) == "h1         h2\n---------  ----\na          b c\nlong cell  x"
