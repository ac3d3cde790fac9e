"""No silent green (issue 11): a stage that was not judged says why, where a reviewer looks.

The terminal table gives every new, not comparable and inconclusive row a numbered note with its
reason (shared reasons share a note), the summary counts them, --llmcycle-strict-all fails them,
and a stage past twice its baseline is never a plain pass (terminal, Markdown, JUnit). A test held
in the file under another device key says so by name, and every timed run starts with a line that
names the baseline file, the device key, threads, threshold and mode.

The pytester stories reuse test_plugin_flow's project: a fake clock and MACHINE_FACTOR standing in
for the reference workload, so every verdict is exact.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import pytest_llmcycle.run.fixture  # noqa: F401  - loaded once, outside the inline pytester runs
import torch  # noqa: F401
from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports import markdown, terminal
from pytest_llmcycle.reports.outputs import junit_properties
from pytest_llmcycle.run.results import CYCLE, StageResult
from pytest_llmcycle.storage.baseline import Entry
from test_plugin_flow import BASELINE, CONFTEST, INI, TWO_TESTS, record

MACHINE_CHECK = ("-o", "llmcycle_machine_check=true")


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_model=TWO_TESTS)
    return pytester


def busy_machine(monkeypatch, factor: str) -> None:
    """Every stage and the reference workload read ``factor`` times slower than when recorded."""
    for stage in ("forward", "prefill", "decode"):
        monkeypatch.setenv("SLOW_" + stage.upper(), factor)
    monkeypatch.setenv("MACHINE_FACTOR", factor)


# ----------------------------------------------------------------------------- the wording


def test_the_machine_factor_reads_the_right_way_round():
    assert vd.machine_note(2.13) == (
        "this machine is 2.13x slower than when the baseline was recorded (too different to normalise: inconclusive)"
    )
    assert vd.machine_note(0.8) == "this machine is 1.25x faster than when the baseline was recorded (times normalised by it)"
    assert vd.machine_note(1.02).endswith("(within noise, not normalised)")
    assert "machine speed" not in vd.machine_note(1.3) and "of baseline's" not in vd.machine_note(1.3)


def test_stages_unjudged_on_a_far_off_machine_share_one_note_whatever_each_ones_factor():
    assert vd.machine_far_note([2.38, 2.41]).startswith("this machine read 2.38x .. 2.41x slower than when the baseline")
    assert vd.machine_far_note([0.5]).startswith("this machine read 2.00x faster than")


# ----------------------------------------------------------------------------- rows built by hand


def row(stage, outcome, reason="", *, base_ms=2.0, ms=2.0, factor=None, kind="stage", decided_by=""):
    v = vd.Verdict(outcome, 0.1, 0.1, ratio=ms / base_ms, reason=reason, machine_factor=factor, decided_by=decided_by)
    base = None if outcome == vd.NEW else Entry(base_ms, base_ms, base_ms, 1, (base_ms,))
    return StageResult("t.py::test_x", stage, "ci", v, kind=kind, median_ms=ms, baseline=base)


def test_notes_number_each_reason_once_and_count_the_rows_that_share_it():
    rows = [
        row("a", vd.INCONCLUSIVE, "+140.0%, but ...", ms=4.8, factor=2.38),
        row("b", vd.INCONCLUSIVE, "+141.0%, but ...", ms=4.82, factor=2.41),
        row("c", vd.NEW, "no baseline yet: record one with --llmcycle-update"),
        row("d", vd.OK, "within 10.0%"),
    ]
    numbered, texts = terminal.notes(rows)
    assert [numbered.get(id(r)) for r in rows] == [1, 1, 2, None]
    assert texts[0][0].startswith("inconclusive: this machine read 2.38x .. 2.41x slower") and texts[0][1] == 2
    assert texts[1] == ("new: no baseline yet: record one with --llmcycle-update", 1)
    table = terminal.terminal_table(rows).splitlines()
    assert table[0].split() == ["test", "stage", "baseline", "current", "change", "note", "verdict"]
    assert table[-2].startswith("[1] inconclusive: this machine read") and table[-2].endswith("(2 rows)")
    assert table[-1] == "[2] new: no baseline yet: record one with --llmcycle-update"
    assert terminal.not_judged_line(rows).startswith("llmcycle: 3 stages not judged: inconclusive: this machine read")


def test_a_table_of_judged_rows_keeps_its_narrow_layout():
    rows = [row("a", vd.OK, "within 10.0%"), row("b", vd.REGRESSED, "+30.0% slower", ms=2.6)]
    assert terminal.terminal_table(rows).splitlines()[0].split() == terminal.HEADERS
    assert terminal.not_judged_line(rows) == ""


def test_past_twice_its_baseline_a_row_carries_a_warning_into_junit_and_markdown():
    ok_but_far = row("forward", vd.OK, "within 10.0%", ms=4.2)
    assert ok_but_far.warning.startswith("reads 2.10x its baseline's median (ok)")
    assert row("forward", vd.OK, ms=3.9).warning == ""
    props = dict(junit_properties([ok_but_far]))
    assert props["llmcycle.forward.warning"] == ok_but_far.warning
    assert terminal.warning_lines([ok_but_far]) == [f"llmcycle: WARNING t.py::test_x forward {ok_but_far.warning}"]
    md = markdown.render([ok_but_far], {})
    assert "1 stage read more than twice the baseline" in md and "reads 2.10x its baseline" in md


def test_markdown_names_the_deciding_counter_and_the_reason_of_every_not_judged_row():
    rows = [
        row("decode", vd.REGRESSED, "flops 100 -> 200 per token (+100.0%)", decided_by=vd.BY_COUNTERS),
        row("prefill", vd.NOT_COMPARABLE, "baseline recorded under a different environment (threads 1 -> 2)"),
        row("e2e", vd.NEW, "no baseline yet: record one with --llmcycle-update"),
        row("T = prefill + decode", vd.INCONCLUSIVE, "cycle +20.0% but its 95% CI includes no change", kind=CYCLE),
    ]
    table = [line for line in markdown.render(rows, {}).splitlines() if line.startswith("| ") and "t.py" in line]
    notes = {line.split(" | ")[2]: line.split(" | ")[-1].rstrip(" |") for line in table}
    shown = markdown.cell  # as a Markdown cell shows text: "(" and ">" escaped
    assert notes["decode"] == shown("flops 100 -> 200 per token (+100.0%)")
    assert notes["prefill"].startswith(shown("baseline recorded under a different environment (threads 1 -> 2)"))
    assert notes["e2e"] == shown("no baseline yet: record one with --llmcycle-update")
    assert notes["cycle T = prefill + decode"] == shown("cycle +20.0% but its 95% CI includes no change")
    assert "**3 stages not judged**" in markdown.render(rows, {})


def test_the_header_names_the_mode():
    from pytest_llmcycle.config import Settings

    assert terminal.run_mode(Settings()) == "check"
    assert terminal.run_mode(Settings(strict=True, strict_all=True)) == "check, strict-all"
    assert terminal.run_mode(Settings(update=True, update_all=True, update_force=True)) == "record all (forced)"
    assert terminal.run_header("b.json", False, "ci", 2, 0.1, "check") == (
        "llmcycle: baseline b.json (not found: every stage is new), device key ci, 2 thread(s), threshold 10%, mode check"
    )


# ----------------------------------------------------------------------------- stories


def test_a_busy_machine_passes_but_says_every_stage_was_not_judged_and_why(project, monkeypatch):
    record(project)
    busy_machine(monkeypatch, "2.4")
    result = project.runpytest(*MACHINE_CHECK, "--junitxml=report.xml", "--llmcycle-report", "latency.md")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test *stage *baseline *current *change *note *verdict",
            "*test_forward*forward *2 ms*4.8 ms*+140.0%*[[]1]*inconclusive",
            "*test_generate*cycle T*[[]1]*inconclusive",
            "[[]1] inconclusive: this machine read 2.40x slower than when the baseline was recorded: too different "
            "to normalise (more than 35% off), so not judged; rerun on a quiet machine (4 rows)",
            "llmcycle: 4 stages not judged: inconclusive: this machine read 2.40x slower * (--llmcycle-strict-all fails them)",
            "llmcycle: WARNING test_model.py::test_forward forward reads 2.40x its baseline's median (inconclusive)*",
        ]
    )
    cases = {c.get("name"): c for c in ET.parse(project.path / "report.xml").getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_forward"].iter("property")}
    assert props["llmcycle.forward.verdict"] == "inconclusive"
    assert "this machine is 2.40x slower than when the baseline was recorded" in props["llmcycle.forward.reason"]
    assert props["llmcycle.forward.warning"].startswith("reads 2.40x its baseline's median")
    md = (project.path / "latency.md").read_text()
    assert "**4 stages not judged**" in md and "4 stages read more than twice the baseline" in md


def test_strict_all_fails_the_stages_that_were_not_judged(project, monkeypatch):
    record(project)
    busy_machine(monkeypatch, "2.4")
    result = project.runpytest(*MACHINE_CHECK, "--llmcycle-strict-all")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: stage 'forward' on ci-runner was not judged (inconclusive: +140.0%, but this machine is 2.40x "
            "slower than when the baseline was recorded (too different to normalise: inconclusive)) and "
            "--llmcycle-strict-all is set",
        ]
    )
    # plain --llmcycle-strict still passes inconclusive stages, as before
    project.runpytest(*MACHINE_CHECK, "--llmcycle-strict").assert_outcomes(passed=2)
    project.makeini(INI + "llmcycle_strict_all = true\n")
    project.runpytest(*MACHINE_CHECK).assert_outcomes(failed=2)


def test_a_test_held_under_another_device_key_says_so_by_name_and_what_to_do(project):
    record(project, "--llmcycle-device-key", "cpu-amd-epyc")
    result = project.runpytest("--llmcycle-strict")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "llmcycle: stage 'forward' on ci-runner has no usable baseline (new: no baseline for device key "
            "'ci-runner' in .llmcycle/baselines.json, which holds this test under 'cpu-amd-epyc': record one for "
            "this key (--llmcycle-update), or, on the same runner class, use that "
            "key (--llmcycle-device-key cpu-amd-epyc), or compare base against head on this machine (llmcycle "
            "compare)) and --llmcycle-strict is set",
        ]
    )
    plain = project.runpytest()
    plain.assert_outcomes(passed=2)
    plain.stdout.fnmatch_lines(["[[]1] new: no baseline for device key 'ci-runner' *under 'cpu-amd-epyc'* (3 rows)"])
    project.runpytest("--llmcycle-device-key", "cpu-amd-epyc", "--llmcycle-strict").assert_outcomes(passed=2)


def test_a_timed_run_starts_by_naming_its_file_key_threads_threshold_and_mode(project):
    first = project.runpytest()
    first.stdout.fnmatch_lines(
        [
            "collected 2 items",
            f"llmcycle: baseline {BASELINE} (not found: every stage is new), device key ci-runner, * thread(s), "
            "threshold 10%, mode check",
            "test_model.py ..*",
        ]
    )
    record(project).stdout.fnmatch_lines([f"llmcycle: baseline {BASELINE} (*), device key ci-runner, *, mode record"])
    project.runpytest("--llmcycle-threshold", "0.2").stdout.fnmatch_lines(
        [f"llmcycle: baseline {BASELINE}, device key ci-runner, * thread(s), threshold 20%, mode check"]
    )


def test_a_file_outside_the_project_is_named_by_its_full_path(project, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "latency.json"
    option = f"--llmcycle-baseline={elsewhere}"
    record(project, option)
    assert json.loads(elsewhere.read_text())["devices"]["ci-runner"]["tests"]
    monkeypatch.setenv("SLOW_FORWARD", "1.3")
    result = project.runpytest(option)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"llmcycle: baseline {elsewhere}, device key ci-runner, *", f"*- llmcycle: ci-runner, * thread(s), baseline {elsewhere} -*"]
    )
    # The trap: as a separate argument, an existing file is read by pytest as a path to
    # test, before the plugin's options are known, and the rootdir moves to a common ancestor
    # without the project's ini file. Everything is new then; the first line says what was used.
    moved = project.runpytest("--llmcycle-baseline", str(elsewhere))
    moved.stdout.fnmatch_lines([f"llmcycle: baseline {elsewhere}, device key *", "llmcycle: 4 stages not judged: *"])
    assert "device key ci-runner" not in moved.stdout.str()


def test_reasons_of_not_comparable_rows_are_in_the_table(project):
    record(project, "--llmcycle-threads", "1")
    result = project.runpytest("--llmcycle-threads", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_forward*forward *[[]1]*not comparable",
            "[[]1] not comparable: baseline recorded under a different environment (threads 1 -> 2): re-record with "
            "--llmcycle-update (3 rows)",
            "llmcycle: 4 stages not judged: *",
        ]
    )
