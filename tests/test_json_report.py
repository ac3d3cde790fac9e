"""The JSON outputs read without guessing: ``change`` and its interval on one scale (and the
ratio on its own, named), the run's commit with a ``dirty`` flag, ``llmcycle show --format json``
with each key as fields.

Verdicts come from the real engine on synthetic samples; the commit tests make real git
repositories; the last story runs the plugin (fake clock) in one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import jsondoc
from pytest_llmcycle.reports.outputs import run_meta
from pytest_llmcycle.run.results import StageResult
from pytest_llmcycle.storage.baseline import Baselines, entry_from_samples

from test_plugin_flow import CONFTEST, INI

KEY = "cpu-test"
ENV = {"threads": 1, "torch": "2.13.0"}


def samples(center: float, n: int = 40) -> list[float]:
    return [center * (1 + 0.02 * (((i * 37) % n) / n - 0.5)) for i in range(n)]


def judged(nodeid: str, stage: str, base_ms: float, now_ms: float, threshold: float = 0.10) -> StageResult:
    """A row as the fixture makes it: the engine's verdict on synthetic samples."""
    base = entry_from_samples(samples(base_ms), "call", None, ENV)
    cur = entry_from_samples(samples(now_ms), "call", None, ENV)
    v = vd.judge(list(base.samples_ms), list(cur.samples_ms), threshold)
    return StageResult(nodeid, stage, KEY, v, median_ms=cur.median_ms, q1_ms=cur.q1_ms, q3_ms=cur.q3_ms, n=cur.n,
                       samples_ms=cur.samples_ms, baseline=base, env=ENV)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- one scale


def test_change_and_its_interval_are_fractions_and_the_ratio_and_its_interval_ratios():
    slower = judged("t.py::test_a", "prefill", 10.0, 13.0)  # +30 %: the engine bootstraps an interval
    assert slower.outcome == vd.REGRESSED and slower.verdict.ci is not None
    doc = json.loads(jsondoc.render([slower], {}))
    assert doc["schema"] == 3
    v = doc["results"][0]["verdict"]
    assert "ci" not in v  # schema 1's name for the ratio interval is gone, not silently re-scaled
    lo, hi = v["change_ci"]
    assert lo <= v["change"] <= hi and 0.2 < lo < 0.3 < hi < 0.4  # fractions: 0.3 = +30 %
    assert v["ratio_ci"][0] <= v["ratio"] <= v["ratio_ci"][1]
    assert v["ratio"] == pytest.approx(1 + v["change"])
    assert v["ratio_ci"] == pytest.approx([1 + lo, 1 + hi])
    assert v["threshold"] == 0.10  # a fraction too, comparable with change as it stands


def test_a_verdict_without_an_interval_writes_null_on_both_scales():
    same = judged("t.py::test_a", "prefill", 10.0, 10.0)  # clearly within: no bootstrap, no interval
    assert same.outcome == vd.OK and same.verdict.ci is None
    new = StageResult("t.py::test_b", "decode", KEY, vd.Verdict(vd.NEW, 0.1, 0.1), median_ms=1.0, n=1, samples_ms=(1.0,))
    for row in json.loads(jsondoc.render([same, new], {}))["results"]:
        assert row["verdict"]["change_ci"] is None and row["verdict"]["ratio_ci"] is None
    assert json.loads(jsondoc.render([new], {}))["results"][0]["verdict"]["change"] is None


def schema_1(text: str) -> str:
    """A report as schema 1 wrote it: ``ci`` (the ratio interval) and no ``change_ci``/``ratio_ci``."""
    doc = json.loads(text)
    doc["schema"] = 1
    for row in doc["results"]:
        v = row["verdict"]
        v["ci"] = v.pop("ratio_ci")
        del v["change_ci"]
    return json.dumps(doc)


def test_compare_reads_reports_of_either_schema(tmp_path, capsys):
    main_rows = [judged("t.py::test_a", "prefill", 10.0, 10.0, 0.25)]
    pr_rows = [judged("t.py::test_a", "prefill", 10.0, 13.0, 0.25)]  # +30 % against the main run's samples
    old1, old2 = tmp_path / "main1.json", tmp_path / "main2.json"
    old2.write_text(jsondoc.render(main_rows, {}), encoding="utf-8")
    old1.write_text(schema_1(old2.read_text(encoding="utf-8")), encoding="utf-8")
    new2 = tmp_path / "pr2.json"
    new2.write_text(jsondoc.render(pr_rows, {}), encoding="utf-8")
    new1 = tmp_path / "pr1.json"
    new1.write_text(schema_1(new2.read_text(encoding="utf-8")), encoding="utf-8")
    for old, new in ((old1, new2), (old2, new1), (old1, new1), (old2, new2)):
        code, out, err = run(capsys, "compare", old, new, "--format", "json")
        assert code == 1, (old.name, new.name, err)  # the regression found, whichever schema wrote each file
        row = json.loads(out)["results"][0]
        assert row["outcome"] == vd.REGRESSED and row["verdict"]["threshold"] == 0.25  # the test's own threshold
        assert row["verdict"]["change_ci"][0] <= row["verdict"]["change"] <= row["verdict"]["change_ci"][1]
        assert run(capsys, "compare", new, old)[0] == 0  # and back: faster, no regression


# ----------------------------------------------------------------------------- show --format json


def test_show_json_gives_each_key_as_fields_even_with_spaces_in_them(tmp_path, capsys):
    b = Baselines(tmp_path / "b.json")
    spaced = "tests/test_m.py::test_gen[a b]"  # a parameter id with a space: joined keys were ambiguous
    b.set_entry(KEY, spaced, "prefill", entry_from_samples(samples(10.0), "call", None, ENV))
    b.set_entry("gpu-other", "tests/test_m.py::test_b", "decode", entry_from_samples(samples(2.0), "token", None, ENV))
    b.set_reference(KEY, entry_from_samples(samples(1.0), "call", None, {}, extra={"workload": "w"}))
    (tmp_path / "b.json").write_text(b.dumps(), encoding="utf-8")
    code, out, _ = run(capsys, "show", tmp_path / "b.json", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["kind"] == "baseline" and doc["file"] == str(tmp_path / "b.json")
    assert [(e["device_key"], e["nodeid"], e["stage"]) for e in doc["entries"]] == [
        ("cpu-test", spaced, "prefill"), ("gpu-other", "tests/test_m.py::test_b", "decode")]
    assert doc["entries"][1]["entry"]["unit"] == "token" and doc["entries"][0]["entry"]["n"] == 40
    assert list(doc["references"]) == [KEY]
    code, out, _ = run(capsys, "show", tmp_path / "b.json", "--format", "json", "--device-key", "gpu-other")
    doc = json.loads(out)
    assert [e["device_key"] for e in doc["entries"]] == ["gpu-other"] and doc["references"] == {}


# ----------------------------------------------------------------------------- commit and dirty

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false",
                           *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    r = tmp_path / "repo"
    (r / "tests").mkdir(parents=True)
    (r / "tests" / "test_m.py").write_text("def test_a():\n    pass\n", encoding="utf-8")
    (r / "tests" / "old_name.py").write_text("X = 1\n", encoding="utf-8")
    git(r, "init", "-q")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    return r


@needs_git
def test_a_clean_checkout_is_its_commit_and_not_dirty(repo):
    meta = run_meta(None, repo)
    assert meta["commit"] == git(repo, "rev-parse", "HEAD") and meta["dirty"] is False
    meta = run_meta(None, repo / "tests")  # a rootdir below the repository's top
    assert meta["commit"] == git(repo, "rev-parse", "HEAD") and meta["dirty"] is False


@needs_git
@pytest.mark.parametrize("change", ["edit", "stage", "delete", "rename", "untracked", "untracked elsewhere"])
def test_any_uncommitted_change_makes_the_run_dirty(repo, change):
    if change == "edit":
        (repo / "tests" / "test_m.py").write_text("def test_a():\n    assert 1\n", encoding="utf-8")
    elif change == "stage":
        (repo / "tests" / "test_m.py").write_text("def test_a():\n    assert 1\n", encoding="utf-8")
        git(repo, "add", "tests/test_m.py")
    elif change == "delete":
        (repo / "tests" / "old_name.py").unlink()
    elif change == "rename":
        git(repo, "mv", "tests/old_name.py", "tests/new_name.py")
    elif change == "untracked":  # a new module changes what the tests import as much as an edit does
        (repo / "tests" / "helpers.py").write_text("Y = 2\n", encoding="utf-8")
    else:
        (repo / "src").mkdir()
        (repo / "src" / "model.py").write_text("Y = 2\n", encoding="utf-8")
    meta = run_meta(None, repo / "tests")
    assert meta["dirty"] is True and meta["commit"] == git(repo, "rev-parse", "HEAD")


@needs_git
def test_what_the_run_writes_itself_does_not_make_it_dirty(repo, monkeypatch):
    # baseline files per module (with their lock and an interrupted writer's temp file), reports in a
    # new folder, a history file with its journal, a TensorBoard folder, bytecode caches
    own_template = repo / ".llmcycle" / "{module}.json"
    (repo / ".llmcycle").mkdir()
    for name in ("tests_test_m.json", "tests_test_m.json.lock", ".tests_test_m.json.123.abcd1234.tmp"):
        (repo / ".llmcycle" / name).write_text("{}", encoding="utf-8")
    (repo / "out").mkdir()
    for name in ("r.json", "r.html", "j.xml", "h.sqlite", "h.sqlite-journal"):
        (repo / "out" / name).write_text("x", encoding="utf-8")
    (repo / "tb" / "run1").mkdir(parents=True)
    (repo / "tb" / "run1" / "events.out").write_text("x", encoding="utf-8")
    (repo / "tests" / "__pycache__").mkdir()
    (repo / "tests" / "__pycache__" / "test_m.cpython-311.pyc").write_bytes(b"\0")
    own = [own_template, repo / "out" / "r.json", "out/r.html", repo / "out" / "j.xml", repo / "out" / "h.sqlite", repo / "tb"]
    monkeypatch.chdir(repo)  # relative paths are the working folder's, as pytest's options are
    assert run_meta(None, repo, own_files=own)["dirty"] is False
    (repo / "out" / "notes.txt").write_text("x", encoding="utf-8")  # next to the reports, not one of them
    assert run_meta(None, repo, own_files=own)["dirty"] is True


@needs_git
def test_outside_a_repository_commit_and_dirty_are_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above is looked for
    (tmp_path / "project").mkdir()
    meta = run_meta(None, tmp_path / "project")
    assert meta["commit"] is None and meta["dirty"] is None
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)  # GitHub Actions names the commit
    meta = run_meta(None, tmp_path / "project")
    assert meta["commit"] == "f" * 40 and meta["dirty"] is None


TEST = """
def test_forward(llmcycle, clock):
    llmcycle.measure("forward", clock.work(2.0, "forward"))
"""


@needs_git
def test_a_run_in_a_clean_checkout_reports_it_clean_and_an_edit_dirty(pytester, monkeypatch):
    """The story: record and report in a committed project; the files the run wrote (baselines,
    reports, JUnit XML) leave it clean; an uncommitted edit shows as dirty in the next report."""
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TEST)
    git(pytester.path, "init", "-q")
    git(pytester.path, "add", "-A")
    git(pytester.path, "commit", "-q", "-m", "project")
    head = git(pytester.path, "rev-parse", "HEAD")
    opts = ("--llmcycle-report", "out/r.json", "--llmcycle-report", "out/r.html", "--junitxml", "out/j.xml")
    result = pytester.runpytest("--llmcycle-update", *opts)
    assert result.ret == 0, result.stdout.str()
    meta = json.loads((pytester.path / "out" / "r.json").read_text(encoding="utf-8"))["meta"]
    assert meta["commit"] == head and meta["dirty"] is False, git(pytester.path, "status", "--porcelain", "-uall")
    result = pytester.runpytest(*opts)  # a check run, the baseline file now there
    assert result.ret == 0, result.stdout.str()
    assert json.loads((pytester.path / "out" / "r.json").read_text(encoding="utf-8"))["meta"]["dirty"] is False
    (pytester.path / "test_model.py").write_text(TEST + "\n# tuned\n", encoding="utf-8")
    pytester.runpytest(*opts)
    meta = json.loads((pytester.path / "out" / "r.json").read_text(encoding="utf-8"))["meta"]
    assert meta["commit"] == head and meta["dirty"] is True
    html = (pytester.path / "out" / "r.html").read_text(encoding="utf-8")
    assert "<th>dirty</th><td>True</td>" in html  # the HTML's environment table shows it too


TWO = """
def test_two(llmcycle, clock):
    llmcycle.measure("prefill", clock.work(2.0, "prefill"))
    llmcycle.measure("decode", clock.work(1.0, "decode"))
"""


def test_each_stage_says_what_timing_it_cost(pytester):
    """``section_s``: the wall time of a stage's timed section (cold call, calibration, warm-up,
    rounds), measured on the real clock whatever clock times the stage, once per stage."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TWO)
    for extra in (("--llmcycle-update",), ()):
        result = pytester.runpytest(*extra, "--llmcycle-report", "r.json")
        assert result.ret == 0, result.stdout.str()
        rows = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))["results"]
        stages = {r["stage"]: r for r in rows if r["kind"] == "stage"}
        assert set(stages) == {"prefill", "decode"}
        for r in stages.values():
            assert isinstance(r["section_s"], float) and 0 < r["section_s"] < 60, r
        assert all(r["section_s"] is None for r in rows if r["kind"] != "stage")  # cold rows and the cycle: not sections
