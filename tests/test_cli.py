"""The ``llmcycle`` command: show, compare (exit codes 0/1/2), prune, --help.

Files are written with the plugin's own formatter from synthetic samples; compare runs the
real verdict engine on them, so an exit code here is the engine's answer, not a fixture's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmcycle import cli
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.storage.baseline import Baselines, Entry
from pytest_llmcycle.reports.jsondoc import render as render_report
from pytest_llmcycle.storage.baseline import entry_from_samples
from pytest_llmcycle.run.results import StageResult

KEY = "cpu-test"
ENV = {"threads": 1, "torch": "2.13.0"}


def samples(center: float, n: int = 40) -> list[float]:
    return [center * (1 + 0.02 * (((i * 37) % n) / n - 0.5)) for i in range(n)]


def baseline_file(path: Path, stages: dict, env: dict = ENV, reference: float | None = None) -> Path:
    """stages: {(nodeid, stage): center_ms}"""
    b = Baselines(path)
    for (nodeid, stage), center in stages.items():
        b.set_entry(KEY, nodeid, stage, entry_from_samples(samples(center), "call", None, env))
    if reference is not None:
        b.set_reference(KEY, entry_from_samples(samples(reference), "call", None, {}, extra={"workload": "w"}))
    path.write_text(b.dumps(), encoding="utf-8")
    return path


A = ("tests/test_m.py::test_a", "prefill")
B = ("tests/test_m.py::test_b", "decode")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- compare


def test_compare_same_numbers_exits_0(tmp_path, capsys):
    old = baseline_file(tmp_path / "old.json", {A: 10.0, B: 2.0})
    new = baseline_file(tmp_path / "new.json", {A: 10.0, B: 2.0})
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 0
    assert "2 ok; exit code 0" in out


def test_compare_a_slower_stage_exits_1_and_names_it(tmp_path, capsys):
    old = baseline_file(tmp_path / "old.json", {A: 10.0, B: 2.0})
    new = baseline_file(tmp_path / "new.json", {A: 10.0, B: 3.0})
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 1
    lines = [ln for ln in out.splitlines() if "test_b" in ln]
    assert len(lines) == 1 and "regressed" in lines[0] and "+50.0%" in lines[0]
    assert out.index("test_b") < out.index("test_a")  # regressions first


def test_compare_threshold_decides_like_the_plugin(tmp_path, capsys):
    old = baseline_file(tmp_path / "old.json", {A: 10.0})
    new = baseline_file(tmp_path / "new.json", {A: 12.0})
    assert run(capsys, "compare", old, new, "--threshold", "0.1")[0] == 1
    assert run(capsys, "compare", old, new, "--threshold", "0.3")[0] == 0


def test_compare_normalises_by_the_reference_workload_of_both_files(tmp_path, capsys):
    # everything 20 % slower, the reference too: a slower machine, not slower code
    old = baseline_file(tmp_path / "old.json", {A: 10.0}, reference=1.0)
    new = baseline_file(tmp_path / "new.json", {A: 12.0}, reference=1.2)
    code, out, _ = run(capsys, "compare", old, new, "--format", "json")
    row = json.loads(out)["results"][0]
    assert code == 0 and row["outcome"] == vd.OK and row["verdict"]["normalised"] is True


def test_compare_reads_json_reports_and_uses_each_tests_threshold(tmp_path, capsys):
    """Artifacts of two CI runs (main and a PR): the threshold each test ran with is used."""
    def report(path: Path, center: float, threshold: float) -> Path:
        e = entry_from_samples(samples(center), "token", None, ENV)
        r = StageResult(B[0], B[1], KEY, vd.Verdict(vd.OK, threshold, threshold), unit="token", median_ms=e.median_ms,
                        q1_ms=e.q1_ms, q3_ms=e.q3_ms, n=e.n, samples_ms=e.samples_ms, env=ENV)
        path.write_text(render_report([r], {"device_key": KEY}), encoding="utf-8")
        return path

    main = report(tmp_path / "main.json", 2.0, 0.25)
    assert run(capsys, "compare", main, report(tmp_path / "pr1.json", 2.4, 0.25))[0] == 0  # +20 % < 25 %
    code, out, _ = run(capsys, "compare", main, report(tmp_path / "pr2.json", 2.6, 0.25))
    assert code == 1 and "/token" in out
    # a baseline file against a report works too
    base = tmp_path / "base.json"
    b = Baselines(base)
    b.set_entry(KEY, B[0], B[1], entry_from_samples(samples(2.0), "token", None, ENV))
    base.write_text(b.dumps(), encoding="utf-8")
    assert run(capsys, "compare", base, tmp_path / "pr2.json")[0] == 1


def test_compare_new_stages_and_other_environments_pass_unless_strict(tmp_path, capsys):
    old = baseline_file(tmp_path / "old.json", {A: 10.0})
    new = baseline_file(tmp_path / "new.json", {A: 30.0, B: 2.0}, env={"threads": 2, "torch": "2.13.0"})
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 0 and "not comparable" in out and "new" in out
    assert run(capsys, "compare", old, new, "--strict")[0] == 1


def test_compare_lists_stages_only_in_old(tmp_path, capsys):
    old = baseline_file(tmp_path / "old.json", {A: 10.0, B: 2.0})
    new = baseline_file(tmp_path / "new.json", {A: 10.0})
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 0 and f"only in {old}: {KEY} {B[0]} {B[1]}" in out


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), ("{not json", "not a readable JSON file"), ('{"x": 1}', "neither a pytest-llmcycle baseline"),
     ('{"schema": 99, "devices": {}}', "newer than this pytest-llmcycle reads")],
)
def test_compare_unreadable_files_exit_2(tmp_path, capsys, content, message):
    good = baseline_file(tmp_path / "good.json", {A: 10.0})
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    code, out, err = run(capsys, "compare", good, bad)
    assert code == 2 and message in err and err.startswith("llmcycle: error:")


def test_bad_arguments_exit_2(capsys):
    for argv in (["compare", "a.json"], ["compare", "a", "b", "--threshold", "-0.1"], ["frobnicate"], []):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
    capsys.readouterr()


@pytest.mark.parametrize("command", [[], ["show"], ["compare"], ["prune"], ["history"]])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: llmcycle")


def test_python_dash_m_and_the_console_script_are_the_same_command(tmp_path):
    f = baseline_file(tmp_path / "b.json", {A: 10.0})
    proc = subprocess.run([sys.executable, "-m", "pytest_llmcycle", "show", str(f)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "prefill" in proc.stdout
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "llmcycle"]
    assert [ep.value for ep in scripts] == ["pytest_llmcycle.cli:main"]


def test_importing_the_cli_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import pytest_llmcycle.cli; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new & {'numpy', 'torch', 'tabulate', 'filelock', 'pytest', 'transformers'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# ----------------------------------------------------------------------------- show


def test_show_lists_every_entry(tmp_path, capsys):
    f = baseline_file(tmp_path / "b.json", {A: 10.0, B: 2.0}, reference=1.0)
    code, out, _ = run(capsys, "show", f)
    assert code == 0
    rows = [ln for ln in out.splitlines() if ln.startswith(KEY)]
    assert [r.split()[1:3] for r in rows] == [list(A), list(B)]
    assert "10 ms" in rows[0] and "threads 1, torch 2.13.0" in rows[0]
    assert "2 stage(s)" in out and "reference workload" in out
    code, out, _ = run(capsys, "show", f, "--test", "test_b", "--format", "json")
    assert [(e["device_key"], e["nodeid"], e["stage"]) for e in json.loads(out)["entries"]] == [(KEY, *B)]


# ----------------------------------------------------------------------------- prune

PROJECT_TEST = """
import pytest

def test_a():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_c(n):
    pass
"""


def test_prune_keeps_collected_tests_and_removes_the_rest(tmp_path, capsys):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text(PROJECT_TEST, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    gone_test = ("tests/test_m.py::test_b", "decode")
    kept_param = ("tests/test_m.py::test_c[2]", "prefill")
    f = baseline_file(tmp_path / "b.json", {A: 10.0, gone_test: 2.0, kept_param: 3.0}, reference=1.0)
    before = f.read_text(encoding="utf-8")

    code, out, _ = run(capsys, "prune", f, "--collect", "--rootdir", tmp_path, "--dry-run")
    assert code == 0 and f"would remove: {KEY} tests/test_m.py::test_b (decode)" in out
    assert "would remove 1 test entry" in out and f.read_text(encoding="utf-8") == before

    code, out, _ = run(capsys, "prune", f, "--collect", "--rootdir", tmp_path)
    assert code == 0 and "removed 1 test entry" in out
    left = {(n, s) for _, n, s, _ in Baselines.load(f).iter_entries()}
    assert left == {A, kept_param}
    assert Baselines.load(f).reference(KEY) is not None
    assert not list(tmp_path.glob(".b.json.*.tmp"))  # atomic write left no temp file


def test_prune_with_given_ids_and_refusals(tmp_path, capsys, monkeypatch):
    f = baseline_file(tmp_path / "b.json", {A: 10.0, B: 2.0})
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{A[0]}\n\n3 tests collected\n", encoding="utf-8")
    code, out, _ = run(capsys, "prune", f, "--keep-from", ids)
    assert code == 0 and {n for _, n, _, _ in Baselines.load(f).iter_entries()} == {A[0]}
    # nothing to keep would delete everything: refused
    code, _, err = run(capsys, "prune", f)
    assert code == 2 and "refusing" in err
    # a collection error never prunes
    (tmp_path / "test_broken.py").write_text("import nonexistent_module_xyz\n", encoding="utf-8")
    code, _, err = run(capsys, "prune", f, "--collect", "--rootdir", tmp_path)
    assert code == 2 and "collecting tests failed" in err
    assert {n for _, n, _, _ in Baselines.load(f).iter_entries()} == {A[0]}


def test_compare_only_judges_device_keys_both_files_have(tmp_path, capsys):
    """A baseline file holds every runner class; a CI report one: the others are not 'removed'."""
    old = baseline_file(tmp_path / "old.json", {A: 10.0})
    b = Baselines.load(old)
    b.set_entry("cuda-h100", A[0], A[1], entry_from_samples(samples(1.0), "call", None, ENV))
    old.write_text(b.dumps(), encoding="utf-8")
    new = baseline_file(tmp_path / "new.json", {A: 10.0})
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 0 and "only in" not in out and "1 ok" in out
    assert "device keys in only one file, not compared: cuda-h100" in out


# ----------------------------------------------------------------------------- folders of per-module files


C = ("tests/test_n.py::test_c", "forward")


def per_module_folder(path: Path, centers: dict) -> Path:
    """{module: {(nodeid, stage): center_ms}} -> path/<module>.json each, as --llmcycle-baseline 'path/{module}.json' writes."""
    path.mkdir()
    for module, stages in centers.items():
        baseline_file(path / f"{module}.json", stages, reference=1.0)
    return path


def test_show_and_compare_read_a_folder_of_per_module_files_as_one(tmp_path, capsys):
    old = per_module_folder(tmp_path / "old", {"tests.test_m": {A: 10.0, B: 2.0}, "tests.test_n": {C: 5.0}})
    new = per_module_folder(tmp_path / "new", {"tests.test_m": {A: 10.0, B: 2.0}, "tests.test_n": {C: 7.0}})
    code, out, _ = run(capsys, "show", old)
    assert code == 0 and all(nodeid in out for nodeid, _ in (A, B, C)) and "3 stage(s)" in out
    code, out, _ = run(capsys, "compare", old, new)
    assert code == 1
    assert [ln for ln in out.splitlines() if "regressed" in ln and "test_c" in ln]
    assert "2 ok" in out


def test_compare_refuses_an_empty_folder_or_a_report_among_baselines(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    old = baseline_file(tmp_path / "old.json", {A: 10.0})
    code, _, err = run(capsys, "compare", old, tmp_path / "empty")
    assert code == 2 and "no .json baseline files" in err
    mixed = per_module_folder(tmp_path / "mixed", {"tests.test_m": {A: 10.0}})
    row = StageResult(A[0], A[1], KEY, vd.Verdict(vd.OK, 0.1, 0.1), median_ms=10.0, n=1, samples_ms=(10.0,))
    (mixed / "report.json").write_text(render_report([row], {}), encoding="utf-8")
    code, _, err = run(capsys, "compare", old, mixed)
    assert code == 2 and "report.json: a JSON report in a folder of baseline files" in err


def test_prune_a_folder_prunes_every_module_file(tmp_path, capsys):
    folder = per_module_folder(tmp_path / "perf", {"tests.test_m": {A: 10.0, B: 2.0}, "tests.test_n": {C: 5.0}})
    code, out, _ = run(capsys, "prune", folder, "--keep", A[0])
    assert code == 0
    assert "removed 1 test entry from" in out and out.count("llmcycle: removed") == 2
    assert {n for _, n, _, _ in Baselines.load(folder / "tests.test_m.json").iter_entries()} == {A[0]}
    assert list(Baselines.load(folder / "tests.test_n.json").iter_entries()) == []
    assert Baselines.load(folder / "tests.test_n.json").reference(KEY) is not None


def test_compare_allows_for_the_old_baselines_recording_processes(tmp_path, capsys):
    from pytest_llmcycle.storage.baseline import append_process

    old = Baselines(tmp_path / "old.json")
    e = append_process(None, entry_from_samples(samples(10.0), "call", None, ENV))
    e = append_process(e, entry_from_samples(samples(12.0), "call", None, ENV))  # a slow-mode process
    old.set_entry(KEY, *A, e)
    (tmp_path / "old.json").write_text(old.dumps(), encoding="utf-8")
    slow_mode = baseline_file(tmp_path / "slow_mode.json", {A: 12.3})
    past_it = baseline_file(tmp_path / "past_it.json", {A: 12.0 * 1.2})
    assert run(capsys, "compare", tmp_path / "old.json", slow_mode)[0] == 0
    code, out, _ = run(capsys, "compare", tmp_path / "old.json", past_it)
    assert code == 1 and "regressed" in out
