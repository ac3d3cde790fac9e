"""The ``llmcycle`` command refuses what it cannot use, in one line, with exit code 2 (issue 15, item 7).

Hostile JSON reports (a string median, no samples, a missing node id, ``results: [1]``, NaN),
deep nesting and lone surrogates never reach a traceback and are never judged as ok; exit
code 1 stays "a stage regressed". ``prune`` changes every file of a folder or none: a file it
cannot read, a folder it cannot write or a full disk leaves every file as it was, and nothing
is printed as removed that was not.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports.jsondoc import SCHEMA, render as render_report
from pytest_llmcycle.run.results import StageResult
from pytest_llmcycle.storage.baseline import Baselines, entry_from_samples

ROOT = Path(__file__).resolve().parents[1]
KEY = "cpu-test"
ENV = {"threads": 1}
A = ("tests/test_m.py::test_a", "prefill")
B = ("tests/test_m.py::test_b", "decode")


def samples(center: float, n: int = 20) -> list[float]:
    return [center * (1 + 0.02 * (((i * 37) % n) / n - 0.5)) for i in range(n)]


def report_doc(center: float = 10.0) -> dict:
    rows = []
    for nodeid, stage in (A, B):
        e = entry_from_samples(samples(center), "call", None, ENV)
        rows.append(StageResult(nodeid, stage, KEY, vd.Verdict(vd.OK, 0.1, 0.1), median_ms=e.median_ms, q1_ms=e.q1_ms,
                                q3_ms=e.q3_ms, n=e.n, samples_ms=e.samples_ms, env=ENV))
    return json.loads(render_report(rows, {"device_key": KEY}))


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, allow_nan=True), encoding="utf-8")
    return path


def baseline_file(path: Path, stages: dict) -> Path:
    b = Baselines(path)
    for (nodeid, stage), center in stages.items():
        b.set_entry(KEY, nodeid, stage, entry_from_samples(samples(center), "call", None, ENV))
    path.write_text(b.dumps(), encoding="utf-8")
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, err: str, name: str) -> bool:
    """Exit 2 and one line on stderr naming the file."""
    return code == 2 and err.startswith("llmcycle: error:") and name in err and err.count("\n") == 1


def row0(doc: dict) -> dict:
    return doc["results"][0]


# ----------------------------------------------------------------------------- hostile reports

def _set(field, value):
    def edit(doc):
        row0(doc)[field] = value
        return doc
    return edit


def _drop(field):
    def edit(doc):
        del row0(doc)[field]
        return doc
    return edit


HOSTILE = {
    "string median": (_set("median_ms", "10.0"), "median_ms='10.0'"),
    "zero samples": (_set("samples_ms", []), "no 'samples_ms' list"),
    "no samples": (_drop("samples_ms"), "no 'samples_ms' list"),
    "a string sample": (_set("samples_ms", ["9.9", 10.0]), "a sample '9.9'"),
    "a negative sample": (_set("samples_ms", [-1.0, 10.0]), "a sample -1.0"),
    "missing node id": (_drop("nodeid"), "nodeid=None"),
    "numeric node id": (_set("nodeid", 7), "nodeid=7"),
    "missing stage": (_drop("stage"), "stage=None"),
    "null median": (_set("median_ms", None), "median_ms=None"),
    "boolean n": (_set("n", True), "n=True"),
    "zero n": (_set("n", 0), "n=0"),
    "a list for env": (_set("env", [1]), "'env'"),
    "a huge counter": (_set("counters", {"flops": 10**400}), "counter flops="),
    "a string threshold": (_set("verdict", {"threshold": "0.1"}), "threshold='0.1'"),
    "a threshold of 10": (_set("verdict", {"threshold": 10}), "threshold=10"),
    "a list for verdict": (_set("verdict", [0.1]), "'verdict'"),
    "results: [1]": (lambda d: {**d, "results": [1]}, "results[0] is not an object"),
    "results: {}": (lambda d: {**d, "results": {}}, "'results' is not a list"),
    "no results": (lambda d: {k: v for k, v in d.items() if k != "results"}, "'results' is not a list"),
    "meta: 3": (lambda d: {**d, "meta": 3}, "'meta' is not an object"),
    "a kind that is a list": (_set("kind", ["stage"]), "kind=['stage']"),
    "a repeated row": (lambda d: {**d, "results": d["results"] + d["results"][:1]}, "repeats a stage"),
    "a newer schema": (lambda d: {**d, "schema": SCHEMA + 1}, "upgrade pytest-llmcycle"),
    "a string schema": (lambda d: {**d, "schema": "1"}, "'schema'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_report_is_refused_by_show_and_compare_in_one_line(tmp_path, capsys, case):
    edit, message = HOSTILE[case]
    bad = write(tmp_path / "bad.json", edit(report_doc()))
    good = write(tmp_path / "good.json", report_doc())
    for argv in (["show", bad], ["compare", good, bad], ["compare", bad, good], ["show", bad, "--format", "json"]):
        code, out, err = run(capsys, *argv)
        assert refused(code, err, str(bad)), (argv, code, err)
        assert message in err, err
        assert out == ""  # nothing judged, nothing shown: not "ok"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_report_is_refused_not_judged(tmp_path, capsys, literal):
    text = json.dumps(report_doc()).replace('"median_ms": ', f'"median_ms": {literal}, "x": ', 1)
    bad = write(tmp_path / "bad.json", text)
    code, out, err = run(capsys, "compare", write(tmp_path / "good.json", report_doc()), bad)
    assert refused(code, err, str(bad)) and literal in err and out == ""


def test_a_valid_report_still_compares_and_its_derived_rows_are_left_out(tmp_path, capsys):
    # the refusals above are not a refusal of everything: the same report unedited is judged
    doc = report_doc()
    doc["results"].append({**row0(doc), "kind": "cycle", "stage": "T = a + b", "samples_ms": []})  # derived: skipped
    code, out, err = run(capsys, "compare", write(tmp_path / "a.json", doc), write(tmp_path / "b.json", report_doc()))
    assert code == 0 and err == "" and "2 ok; exit code 0" in out


def test_a_slower_report_still_exits_1(tmp_path, capsys):
    code, out, _ = run(capsys, "compare", write(tmp_path / "a.json", report_doc(10.0)), write(tmp_path / "b.json", report_doc(15.0)))
    assert code == 1 and "2 regressed" in out


# ----------------------------------------------------------------------------- deep nesting, lone surrogates

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("command", ["show", "compare", "prune"])
def test_deep_nesting_is_refused_by_every_command(tmp_path, capsys, command):
    bad = write(tmp_path / "deep.json", '{"format": "pytest-llmcycle-report", "schema": 1, "results": ' + DEEP + "}")
    other = baseline_file(tmp_path / "ok.json", {A: 10.0})
    argv = {"show": ["show", bad], "compare": ["compare", other, bad], "prune": ["prune", bad, "--keep", A[0]]}[command]
    code, out, err = run(capsys, *argv)
    assert refused(code, err, "deep.json"), err
    # a baseline file nested as deeply is refused too
    deep_baseline = write(tmp_path / "deep_b.json", '{"schema": 1, "devices": {"k": {"tests": {"t::x": {"s": ' + DEEP + "}}}}}")
    argv = {"show": ["show", deep_baseline], "compare": ["compare", other, deep_baseline],
            "prune": ["prune", deep_baseline, "--keep", A[0]]}[command]
    code, out, err = run(capsys, *argv)
    assert refused(code, err, "deep_b.json"), err


def test_a_lone_surrogate_in_keys_is_shown_escaped_and_pruned_cleanly(tmp_path, capsys):
    good = baseline_file(tmp_path / "b.json", {A: 10.0, ("tests/test_m.py::test_s[\ud800]", "st\udfff"): 5.0})
    text = good.read_text(encoding="utf-8")
    assert "\\ud800" in text  # the file holds the escape, as JSON allows
    for argv in (["show", good], ["show", good, "--format", "markdown"], ["show", good, "--format", "json"],
                 ["compare", good, good]):
        code, out, err = run(capsys, *argv)
        assert code in (0, 2), (argv, err)
        if code == 0:
            out.encode("utf-8")  # printable: the surrogate is shown as an escape
        else:
            assert refused(code, err, "b.json")
    code, out, err = run(capsys, "prune", good, "--keep", A[0])
    assert code in (0, 2) and (code == 2 or "removed 1 test entry" in out), err
    out.encode("utf-8")
    # and a report with one in a node id: refused or shown, never a crash
    doc = report_doc()
    row0(doc)["nodeid"] = "t.py::x[\ud800]"
    code, out, err = run(capsys, "show", write(tmp_path / "r.json", json.dumps(doc)))
    assert code in (0, 2) and (out + err).encode("utf-8")


# ----------------------------------------------------------------------------- prune: all or nothing

def folder_of_two(tmp_path: Path) -> Path:
    folder = tmp_path / "perf"
    folder.mkdir()
    baseline_file(folder / "tests.test_m.json", {A: 10.0, B: 2.0})
    baseline_file(folder / "tests.test_n.json", {("tests/test_n.py::test_c", "fwd"): 5.0, ("tests/test_n.py::test_d", "fwd"): 5.0})
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_prune_refuses_the_whole_folder_when_one_file_is_bad(tmp_path, capsys):
    folder = folder_of_two(tmp_path)
    (folder / "tests.test_n.json").write_text('{"schema": 1, "devices": {"k": {"tests": {"t::x": {"s": {"median_ms": "1"}}}}}}')
    before = snapshot(folder)
    code, out, err = run(capsys, "prune", folder, "--keep", A[0])
    assert refused(code, err, "tests.test_n.json") and "nothing pruned" in err
    assert "removed" not in out and snapshot(folder) == before


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=["full disk", "no permission", "read-only"])
@pytest.mark.parametrize("when", ["creating", "writing"])
def test_prune_changes_no_file_when_the_second_cannot_be_written(tmp_path, capsys, monkeypatch, err_no, when):
    """The fault is injected where the OS would raise it (we may run as root, whom chmod does not stop)."""
    folder = folder_of_two(tmp_path)
    before = snapshot(folder)
    calls = {"mkstemp": 0, "fsync": 0}
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(*a, **k):
        calls["mkstemp"] += 1
        if when == "creating" and calls["mkstemp"] == 2:
            raise OSError(err_no, os.strerror(err_no))
        return real_mkstemp(*a, **k)

    def fsync(fd):
        calls["fsync"] += 1
        if when == "writing" and calls["fsync"] == 2:
            raise OSError(err_no, os.strerror(err_no))
        return real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    code, out, err = run(capsys, "prune", folder, "--keep", A[0])
    assert refused(code, err, "tests.test_n.json") and "nothing pruned" in err and os.strerror(err_no) in err
    assert "removed" not in out
    assert snapshot(folder) == before  # both files as they were, and no temp file left behind
    assert calls["mkstemp"] >= 2  # the fault did fire on the second file


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes a read-only folder anyway")
def test_prune_of_a_read_only_folder_refuses_before_printing_anything(tmp_path, capsys):
    folder = folder_of_two(tmp_path)
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        code, out, err = run(capsys, "prune", folder, "--keep", A[0])
    finally:
        folder.chmod(0o755)
    assert refused(code, err, "perf") and "removed" not in out and snapshot(folder) == before


def test_prune_prints_removed_only_after_every_file_is_written(tmp_path, capsys):
    folder = folder_of_two(tmp_path)
    code, out, err = run(capsys, "prune", folder, "--keep", A[0])
    assert code == 0 and err == ""
    assert out.count("removed: ") == 3  # test_b, test_c, test_d
    assert [n for _, n, _, _ in Baselines.load(folder / "tests.test_m.json").iter_entries()] == [A[0]]
    assert list(Baselines.load(folder / "tests.test_n.json").iter_entries()) == []
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_prune_skips_a_report_in_the_folder_and_leaves_it_alone(tmp_path, capsys):
    folder = folder_of_two(tmp_path)
    report = write(folder / "report.json", report_doc())
    before = report.read_bytes()
    code, out, err = run(capsys, "prune", folder, "--keep", A[0])
    assert code == 0 and "skipped" in out and "report.json" in out and report.read_bytes() == before


# ----------------------------------------------------------------------------- the last resort

def test_an_unexpected_error_is_one_line_with_exit_3_not_1(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(cli, "cmd_show", boom)
    code, out, err = run(capsys, "show", "x.json")
    assert code == cli.INTERNAL == 3 and err.startswith("llmcycle: internal error: RuntimeError: a bug\\nwith")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_ctrl_c_in_the_cli_is_one_line_with_exit_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_prune", interrupted)
    code, _, err = run(capsys, "prune", "x.json", "--keep", "a::b")
    assert code == 130 and err == "llmcycle: interrupted\n"


def test_a_real_process_prints_no_traceback_for_a_hostile_report(tmp_path):
    bad = write(tmp_path / "bad.json", {"format": "pytest-llmcycle-report", "schema": 1, "results": [1]})
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for argv in (["show", bad], ["compare", bad, bad]):
        p = subprocess.run([sys.executable, "-m", "pytest_llmcycle", *map(str, argv)], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
