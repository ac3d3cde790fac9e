"""A report, a history file or a TensorBoard folder is never written over the baselines (issue 15, item 2).

``--llmcycle-report .llmcycle/baselines.json`` used to replace the baselines without a word
(and so switch gating off); now the run is refused at configure time, in one line naming both
options and the fix. With ``{module}`` in the baseline path the folder of the per-module files
is the baselines', so nothing else is written into it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_llmcycle.config import SettingError, Settings, check_output_paths, resolve_run

pytest_plugins = ["pytester"]

ROOT = Path("/work/project")


def check(baseline: str, cli: dict, root: Path = ROOT) -> None:
    check_output_paths(Settings(baseline=baseline), resolve_run(cli, {}, root), root)


@pytest.mark.parametrize(
    "cli",
    [
        {"report": [str(ROOT / ".llmcycle/baselines.json")]},
        {"report": [str(ROOT / "ok.md"), str(ROOT / ".llmcycle/x/../baselines.json")]},
        {"history": str(ROOT / ".llmcycle/baselines.json")},
        {"tensorboard": str(ROOT / ".llmcycle/baselines.json")},
    ],
)
def test_an_output_aimed_at_the_baseline_file_is_refused_in_one_line(cli):
    with pytest.raises(SettingError) as e:
        check(".llmcycle/baselines.json", cli)
    msg = str(e.value)
    flag = "--llmcycle-" + next(iter(cli))
    assert "\n" not in msg and msg.startswith(flag) and "--llmcycle-baseline" in msg
    assert "the baseline file" in msg and "give " + flag in msg  # the fix


@pytest.mark.parametrize("template", ["perf/{module}.json", "perf/lat_{module}.json", "perf/{module}/b.json"])
@pytest.mark.parametrize("output", ["perf/report.json", "perf/latency.md", "perf", "perf/sub/r.html"])
def test_nothing_is_written_into_the_folder_of_per_module_baselines(template, output):
    with pytest.raises(SettingError) as e:
        check(template, {"report": [str(ROOT / output)]} if "." in output else {"tensorboard": str(ROOT / output)})
    assert "folder of the per-module baseline files" in str(e.value) and template in str(e.value)


@pytest.mark.parametrize(
    "baseline, cli",
    [
        (".llmcycle/baselines.json", {"report": [str(ROOT / ".llmcycle/report.json")]}),  # next to one file: fine
        (".llmcycle/baselines.json", {"history": str(ROOT / ".llmcycle/history.sqlite")}),
        ("perf/{module}.json", {"report": [str(ROOT / "reports/latency.json")], "history": str(ROOT / "h.sqlite")}),
        ("perf/{module}.json", {"report": [str(ROOT / "perfx/r.json")]}),  # a folder whose name starts alike
    ],
)
def test_outputs_elsewhere_are_accepted(baseline, cli):
    check(baseline, cli)  # raises nothing


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_symlink_to_the_baseline_file_is_seen_through(tmp_path):
    (tmp_path / ".llmcycle").mkdir()
    (tmp_path / ".llmcycle" / "baselines.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / ".llmcycle" / "baselines.json")
    with pytest.raises(SettingError):
        check(".llmcycle/baselines.json", {"report": [str(tmp_path / "link.json")]}, tmp_path)


TEST = """
def test_fast(llmcycle):
    llmcycle.measure("fwd", lambda: None)
"""


@pytest.mark.parametrize("args", [["--llmcycle-report", ".llmcycle/baselines.json"],
                                  ["--llmcycle-history", ".llmcycle/baselines.json"]])
def test_a_run_aimed_at_the_baselines_stops_before_any_test_and_leaves_the_file(pytester, args):
    pytester.makepyfile(test_x=TEST)
    baselines = pytester.path / ".llmcycle" / "baselines.json"
    baselines.parent.mkdir()
    baselines.write_text('{"schema": 1, "devices": {}}\n')
    before = baselines.read_bytes()
    result = pytester.runpytest_subprocess("--llmcycle-device", "cpu", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {args[0]} *.llmcycle/baselines.json is the baseline file (--llmcycle-baseline*"])
    assert baselines.read_bytes() == before
    result.stdout.no_fnmatch_line("*passed*")


def test_a_report_into_a_per_module_folder_is_refused_by_the_ini_too(pytester):
    pytester.makeini("[pytest]\nllmcycle_baseline = perf/{module}.json\nllmcycle_report = perf/latency.json\n")
    pytester.makepyfile(test_x=TEST)
    result = pytester.runpytest_subprocess("--llmcycle-device", "cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llmcycle-report *perf/latency.json is in *perf, the folder of the per-module*"])
    assert not (pytester.path / "perf").exists()
